//! Writes the seed inputs of the vfio_user_stream target into
//! fuzz/seeds/vfio_user_stream/ (checked in; scripts/fuzz passes the directory to
//! libFuzzer next to the working corpus). Each seed is a plausible QEMU session:
//! byte 0 selects the firmware and device shape, the rest is the stream.
//! Files named `regress-*` there are inputs that once crashed the target, kept
//! by hand (this program leaves them alone).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use cxl_accel_fuzz::vfio::*;
use cxl_regs::hdm as h;
use cxl_regs::layout::{self, engine as e};
use cxl_regs::mailbox as mb;

const CONFIG: u32 = 7;
const BAR0: u32 = 0;
const BAR2: u32 = 2;
const BAR4: u32 = 4;
/// VFIO_IRQ_SET_ACTION_TRIGGER and the data types.
const TRIGGER: u32 = 1 << 5;
const DATA_NONE: u32 = 1 << 0;
const DATA_BOOL: u32 = 1 << 1;
const DATA_EVENTFD: u32 = 1 << 2;

struct S {
    bytes: Vec<u8>,
    id: u16,
}

impl S {
    fn new(sel: u8) -> Self {
        let mut s = S {
            bytes: vec![sel],
            id: 0,
        };
        s.push(version);
        s
    }
    fn push(&mut self, f: impl FnOnce(u16) -> Vec<u8>) -> &mut Self {
        self.id = self.id.wrapping_add(1);
        let m = f(self.id);
        self.bytes.extend(m);
        self
    }
    fn w32(&mut self, region: u32, off: u64, v: u32) -> &mut Self {
        self.push(|id| region_write(id, region, off, &v.to_le_bytes(), false))
    }
    fn w64(&mut self, region: u32, off: u64, v: u64) -> &mut Self {
        self.push(|id| region_write(id, region, off, &v.to_le_bytes(), false))
    }
    fn r(&mut self, region: u32, off: u64, n: u32) -> &mut Self {
        self.push(|id| region_read(id, region, off, n))
    }
    fn bus_master(&mut self) -> &mut Self {
        self.push(|id| region_write(id, CONFIG, 4, &[0x06, 0x00], false))
    }
    fn dma(&mut self, src: u64, dst: u64, len: u64, to_guest: bool) -> &mut Self {
        self.w64(BAR4, e::SRC, src)
            .w64(BAR4, e::DST, dst)
            .w64(BAR4, e::LEN, len)
            .w32(
                BAR4,
                e::CONTROL,
                u32::from(to_guest) | e::CONTROL_IRQ_ENABLE,
            )
            .w32(BAR4, e::DOORBELL, 1)
            .r(BAR4, e::STATUS, 4)
    }
    fn mailbox(&mut self, opcode: u16, input: &[u8]) -> &mut Self {
        if !input.is_empty() {
            let data = input.to_vec();
            self.push(|id| region_write(id, BAR0, layout::MAILBOX_PAYLOAD_OFFSET, &data, false));
        }
        let cmd = u64::from(opcode) | ((input.len() as u64) << mb::CMD_LEN_SHIFT);
        self.w64(BAR0, layout::MAILBOX_OFFSET + 8, cmd)
            .w32(BAR0, layout::MAILBOX_OFFSET + 4, mb::CTRL_DOORBELL)
            .r(BAR0, layout::MAILBOX_OFFSET + 0x10, 8)
            .r(BAR0, layout::MAILBOX_PAYLOAD_OFFSET, 0x80)
    }
    fn decoder(&mut self, n: u32, base: u64, size: u64, ctrl: u32) -> &mut Self {
        let r = |reg: u32| layout::HDM_OFFSET + u64::from(h::decoder_offset(n) + reg);
        self.w32(BAR0, r(h::DEC_BASE_LO), base as u32)
            .w32(BAR0, r(h::DEC_BASE_HI), (base >> 32) as u32)
            .w32(BAR0, r(h::DEC_SIZE_LO), size as u32)
            .w32(BAR0, r(h::DEC_SIZE_HI), (size >> 32) as u32)
            .w32(BAR0, r(h::DEC_CONTROL), ctrl)
            .r(BAR0, r(h::DEC_CONTROL), 4)
    }
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/vfio_user_stream");
    std::fs::create_dir_all(&dir).expect("seed dir");
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    // QEMU's probe: device, region and IRQ info, config space reads.
    let mut s = S::new(0);
    s.push(get_info);
    for i in 0..9 {
        s.push(|id| region_info(id, i, 32));
    }
    s.push(|id| region_info(id, 2, 256));
    for i in 0..5 {
        s.push(|id| irq_info(id, i));
    }
    s.r(CONFIG, 0, 64).r(CONFIG, 0x100, 0x100);
    seeds.push(("probe", s.bytes.clone()));

    // Guest RAM mapped with an fd, DMA both ways, device memory read back, unmap.
    let mut s = S::new(0);
    s.push(|id| dma_map(id, 0x10_0000, 0x1_0000, 0, true))
        .push(|id| dma_map(id, 0xfeb0_0000, 0x1000, 0, false))
        .bus_master()
        .dma(0x10_0000, 0x2000, 0x1000, false)
        .dma(0x2000, 0x10_8000, 0x800, true)
        .r(BAR2, 0x2000, 0x100)
        .push(|id| region_write(id, BAR2, 0x3000, &[0x5a; 64], true))
        .push(|id| dma_unmap(id, 0x10_0000, 0x1_0000, false))
        .push(|id| dma_unmap(id, 0, 0, true))
        .dma(0x10_0000, 0x2000, 0x1000, false);
    seeds.push(("dma", s.bytes.clone()));

    // Interrupts: MSI-X eventfds, enable, a DMA completion, bools, disable.
    let mut s = S::new(0);
    s.push(|id| set_irqs(id, TRIGGER | DATA_EVENTFD, 2, 0, 4, 4, &[]))
        .push(|id| set_irqs(id, TRIGGER | DATA_EVENTFD, 0, 0, 1, 1, &[]))
        .push(|id| region_write(id, CONFIG, 0x92, &[0x03, 0x80], false))
        .push(|id| dma_map(id, 0x4000_0000, 0x8000, 0x1000, true))
        .bus_master()
        .dma(0x4000_0000, 0, 0x100, false)
        .push(|id| set_irqs(id, TRIGGER | DATA_BOOL, 2, 0, 4, 0, &[1, 0, 1, 1]))
        .push(|id| set_irqs(id, TRIGGER | DATA_NONE, 2, 0, 0, 0, &[]))
        .push(reset);
    seeds.push(("irqs", s.bytes.clone()));

    // Mailbox commands through BAR0, Sanitize running while time passes.
    let mut s = S::new(0);
    s.mailbox(mb::OP_IDENTIFY_MEMORY_DEVICE, &[])
        .mailbox(mb::OP_GET_LSA, &[0, 0, 0, 0, 0x40, 0, 0, 0])
        .mailbox(mb::OP_SET_LSA, &[0x10, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .mailbox(mb::OP_INJECT_POISON, &0x1000u64.to_le_bytes())
        .mailbox(mb::OP_SANITIZE, &[])
        .r(BAR0, layout::MAILBOX_OFFSET + 0x18, 8)
        .mailbox(0xc000, &[1, 2, 3]);
    for _ in 0..8 {
        s.r(BAR0, layout::MAILBOX_OFFSET + 0x10, 8);
    }
    seeds.push(("mailbox", s.bytes.clone()));

    // HDM decoders: program, commit, lock, uncommit, global enable; slow-commit
    // firmware (byte 0 = 1).
    let mut s = S::new(1);
    let g = h::GRANULE;
    s.decoder(0, 4 * g, g, h::CTRL_COMMIT)
        .decoder(1, 8 * g, g, h::CTRL_COMMIT | h::CTRL_LOCK_ON_COMMIT)
        .w32(BAR0, layout::HDM_OFFSET + 4, h::GCTRL_HDM_DECODER_ENABLE)
        .decoder(0, 4 * g, g, 0)
        .push(|id| region_write(id, CONFIG, 0x110 + 0xc, &[0x04, 0x00], false));
    for _ in 0..8 {
        s.r(BAR0, layout::HDM_OFFSET + 0x20, 4);
    }
    seeds.push(("hdm", s.bytes.clone()));

    // Framing edge cases: posted write, a reply, an unknown type and command, a
    // message above the limit that is drained, then a size below the header.
    let mut s = S::new(0);
    s.push(|id| region_write(id, BAR4, e::SRC, &[1; 8], true))
        .push(|id| msg(id, 4, 1, 0, &[]))
        .push(|id| msg(id, 4, 7, 0, &[]))
        .push(|id| msg(id, 99, 0, 0, &[]))
        .push(|id| msg(id, 6, 0, 3, &[]))
        .push(get_info);
    let mut big = msg(0x77, 10, 0, 0, &[]);
    big[4..8].copy_from_slice(&(2u32 << 20).to_le_bytes());
    s.bytes.extend(big);
    seeds.push(("framing-drain", s.bytes.clone()));
    let mut s = S::new(0);
    s.push(get_info);
    let mut short = msg(0x78, 4, 0, 0, &[]);
    short[4..8].copy_from_slice(&8u32.to_le_bytes());
    s.bytes.extend(short);
    seeds.push(("framing-short", s.bytes.clone()));

    // Bios firmware (byte 0 = 2), no mailbox (0x10): a locked decoder from power-on.
    let mut s = S::new(0x12);
    s.r(BAR0, layout::HDM_OFFSET, 0x40)
        .decoder(0, 0, g, h::CTRL_COMMIT)
        .push(reset)
        .r(BAR0, layout::HDM_OFFSET + 0x10, 0x20);
    seeds.push(("bios", s.bytes.clone()));

    // Hostile interrupt fds (issue 10): a full blocking pipe, a blocking eventfd
    // with a full counter and fds of every other kind offered as MSI-X vectors,
    // then fired by the client and by a DMA completion; eventfds made blocking
    // again by the client before more interrupts.
    let mut s = S::new(0);
    let fire = |id| set_irqs(id, TRIGGER | DATA_NONE, 2, 0, 4, 0, &[]);
    s.push(|id| region_write(id, CONFIG, 0x92, &[0x03, 0x80], false))
        .push(|id| {
            with_hint(
                set_irqs(id, TRIGGER | DATA_EVENTFD, 2, 2, 1, 1, &[]),
                FdKind::FullPipe.hint(1),
            )
        })
        .push(|id| {
            with_hint(
                set_irqs(id, TRIGGER | DATA_EVENTFD, 2, 3, 1, 1, &[]),
                FdKind::FullBlockingEventFd.hint(1),
            )
        })
        .push(fire)
        .push(|id| dma_map(id, 0x4000_0000, 0x8000, 0, true))
        .bus_master()
        .dma(0x4000_0000, 0, 0x100, false);
    for kind in [
        FdKind::PipeReadEnd,
        FdKind::RegularFile,
        FdKind::Socket,
        FdKind::DevNull,
        FdKind::Memfd,
        FdKind::Directory,
        FdKind::TimerFd,
    ] {
        s.push(|id| {
            with_hint(
                set_irqs(id, TRIGGER | DATA_EVENTFD, 2, 0, 1, 1, &[]),
                kind.hint(1),
            )
        });
    }
    s.push(|id| set_irqs(id, TRIGGER | DATA_EVENTFD, 2, 0, 2, 2, &[]))
        .push(|id| with_hint(set_irqs(id, TRIGGER | DATA_EVENTFD, 3, 0, 1, 1, &[]), 1))
        .push(|id| with_hint(fire(id), HINT_MAKE_BLOCKING))
        .push(fire)
        .dma(0x4000_0000, 0, 0x100, false);
    seeds.push(("hostile-irq-fds", s.bytes.clone()));

    // Guest RAM shrunk by the client after DMA_MAP, then DMA from and to it, past
    // the new end and straddling it; DMA_MAP with fds of the wrong kind.
    let mut s = S::new(0);
    s.push(|id| dma_map(id, 0x10_0000, 0x1_0000, 0, true))
        .bus_master()
        .dma(0x10_8000, 0x2000, 0x1000, false)
        .push(|id| with_hint(get_info(id), shrink_hint(1)))
        .dma(0x10_8000, 0x2000, 0x1000, false)
        .dma(0x2000, 0x10_8000, 0x1000, true)
        .dma(0x2000, 0x10_0800, 0x1000, true)
        .dma(0x10_0000, 0x3000, 0x100, false)
        .push(|id| with_hint(get_info(id), shrink_hint(0)))
        .dma(0x10_0000, 0x3000, 0x100, false);
    for (i, kind) in [
        FdKind::FullPipe,
        FdKind::Socket,
        FdKind::EventFd,
        FdKind::DevNull,
        FdKind::Directory,
        FdKind::RegularFile,
        FdKind::Memfd,
    ]
    .into_iter()
    .enumerate()
    {
        let iova = 0x100_0000 * (i as u64 + 1);
        s.push(|id| with_hint(dma_map(id, iova, 0x1_0000, 0, false), kind.hint(1)))
            .dma(iova, 0x4000, 0x100, false);
    }
    seeds.push(("hostile-dma-fds", s.bytes.clone()));

    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    println!("seeds written to {}", dir.display());
}
