//! The accelerator's DMA engine, at BAR4 + `ENGINE_OFFSET`. Its registers are this
//! device's own (not spec-defined); the layout is fixed in
//! [`cxl_regs::layout::engine`] and used by the guest harness.
//!
//! A write of 1 to DOORBELL bit 0 runs one transfer synchronously, within the write:
//! LEN bytes from SRC to DST, guest RAM -> device memory or, with
//! CONTROL_DIR_TO_GUEST, device memory -> guest RAM. Guest addresses are guest
//! physical and go through the RAM the VMM shared (vfio-user DMA_MAP); device
//! addresses are DPAs. On completion STATUS has DONE, or ERROR with a code in
//! bits 15:8; either way the DMA vector is raised when CONTROL_IRQ_ENABLE is set. No
//! input can make the engine panic: every range is checked before and during the
//! copy, and a guest range that turns out unmapped part-way stops the transfer with
//! ERR_GUEST_RANGE (bytes before the failing chunk have been copied).

use cxl_regs::layout::engine::*;

use crate::access::{merge, qword_half, qword_merge};
use crate::{DeviceMemory, GuestMemory};

/// Bytes copied per step of a transfer.
pub const CHUNK: usize = 64 << 10;

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub completions: u64,
    pub errors: u64,
    pub bytes: u64,
}

/// What a transfer needs from the rest of the device.
pub struct TransferCtx<'a> {
    pub mem: &'a mut dyn DeviceMemory,
    pub guest: &'a dyn GuestMemory,
    /// Command register Bus Master Enable.
    pub bus_master: bool,
    /// Whether any byte of a DPA range is poisoned.
    pub poisoned: &'a dyn Fn(u64, u64) -> bool,
}

/// DMA engine registers and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engine {
    src: u64,
    dst: u64,
    len: u64,
    control: u32,
    status: u32,
    completions: u32,
    stats: EngineStats,
}

/// The CONTROL bits that exist; the rest are reserved.
const CONTROL_BITS: u32 = CONTROL_DIR_TO_GUEST | CONTROL_IRQ_ENABLE;

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }
    /// Reset (every kind: the engine is this function's own state, see
    /// [`crate::reset`]): registers to 0; the statistics survive. Whatever runs a
    /// transfer must stop it here before the reset completes.
    pub fn reset(&mut self) {
        *self = Self {
            stats: self.stats,
            ..Self::default()
        };
    }
    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn status(&self) -> u32 {
        self.status
    }
    pub fn irq_enabled(&self) -> bool {
        self.control & CONTROL_IRQ_ENABLE != 0
    }
    /// Whether STATUS holds a completion (DONE or ERROR) not yet cleared.
    pub fn completion_outstanding(&self) -> bool {
        self.status & (STATUS_DONE | STATUS_ERROR) != 0
    }

    /// Read the dword at `offset` (relative to the engine).
    pub fn read(&self, offset: u64) -> u32 {
        match offset & !3 {
            ID => ID_VALUE,
            VERSION => VERSION_VALUE,
            o if o == SRC || o == SRC + 4 => qword_half(self.src, o != SRC),
            o if o == DST || o == DST + 4 => qword_half(self.dst, o != DST),
            o if o == LEN || o == LEN + 4 => qword_half(self.len, o != LEN),
            CONTROL => self.control,
            STATUS => self.status,
            COMPLETIONS => self.completions,
            _ => 0,
        }
    }

    /// Write the masked bits of `value` to the dword at `offset`. Returns true when
    /// the doorbell was rung: the caller then runs [`Engine::execute`].
    pub fn write(&mut self, offset: u64, value: u32, mask: u32) -> bool {
        match offset & !3 {
            o if o == SRC || o == SRC + 4 => {
                self.src = qword_merge(self.src, o != SRC, value, mask)
            }
            o if o == DST || o == DST + 4 => {
                self.dst = qword_merge(self.dst, o != DST, value, mask)
            }
            o if o == LEN || o == LEN + 4 => {
                self.len = qword_merge(self.len, o != LEN, value, mask)
            }
            CONTROL => self.control = merge(self.control, value, mask & CONTROL_BITS),
            DOORBELL => return value & mask & 1 != 0,
            STATUS => {
                let clear = value & mask & (STATUS_DONE | STATUS_ERROR);
                self.status &= !clear;
                // The error code describes the ERROR bit and goes with it.
                if self.status & STATUS_ERROR == 0 {
                    self.status &= !STATUS_ERR_MASK;
                }
            }
            _ => {}
        }
        false
    }

    /// Run the programmed transfer. Returns Ok on success or the error code, which
    /// STATUS also reports.
    pub fn execute(&mut self, ctx: TransferCtx<'_>) -> Result<(), u32> {
        self.status = STATUS_BUSY;
        let result = self.transfer(ctx);
        match result {
            Ok(()) => {
                self.status = STATUS_DONE;
                self.completions = self.completions.wrapping_add(1);
                self.stats.completions = self.stats.completions.wrapping_add(1);
                self.stats.bytes = self.stats.bytes.wrapping_add(self.len);
            }
            Err(code) => {
                self.status = STATUS_ERROR | ((code << STATUS_ERR_SHIFT) & STATUS_ERR_MASK);
                self.stats.errors = self.stats.errors.wrapping_add(1);
                log::debug!(
                    "dma: error {code} src={:#x} dst={:#x} len={:#x} control={:#x}",
                    self.src,
                    self.dst,
                    self.len,
                    self.control
                );
            }
        }
        result
    }

    fn transfer(&self, ctx: TransferCtx<'_>) -> Result<(), u32> {
        if !ctx.bus_master {
            return Err(ERR_BUS_MASTER);
        }
        if self.len == 0 || self.len > MAX_LEN {
            return Err(ERR_LENGTH);
        }
        let to_guest = self.control & CONTROL_DIR_TO_GUEST != 0;
        let (gpa, dpa) = if to_guest {
            (self.dst, self.src)
        } else {
            (self.src, self.dst)
        };
        match dpa.checked_add(self.len) {
            Some(end) if end <= ctx.mem.size() => {}
            _ => return Err(ERR_DEVICE_RANGE),
        }
        if gpa.checked_add(self.len).is_none() {
            return Err(ERR_GUEST_RANGE);
        }
        if to_guest && (ctx.poisoned)(dpa, self.len) {
            return Err(ERR_POISON);
        }
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(self.len).unwrap_or(CHUNK))];
        let mut done = 0u64;
        while done < self.len {
            let n = (self.len - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            let (g, d) = (gpa + done, dpa + done);
            if to_guest {
                ctx.mem.read(d, chunk).map_err(|_| ERR_DEVICE_RANGE)?;
                ctx.guest.write(g, chunk).map_err(|_| ERR_GUEST_RANGE)?;
            } else {
                ctx.guest.read(g, chunk).map_err(|_| ERR_GUEST_RANGE)?;
                ctx.mem.write(d, chunk).map_err(|_| ERR_DEVICE_RANGE)?;
            }
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_read_back_and_reserved_bits_stay_zero() {
        let mut e = Engine::new();
        assert_eq!(e.read(ID), u32::from_le_bytes(*b"CXLA"));
        assert_eq!(e.read(VERSION), 1);
        e.write(SRC, 0x1111_2222, !0);
        e.write(SRC + 4, 0x3333_4444, !0);
        assert_eq!(e.read(SRC), 0x1111_2222);
        assert_eq!(e.read(SRC + 4), 0x3333_4444);
        e.write(LEN, 0xab, 0xff);
        assert_eq!(e.read(LEN), 0xab);
        e.write(CONTROL, !0, !0);
        assert_eq!(e.read(CONTROL), CONTROL_BITS);
        // ID, VERSION, COMPLETIONS are read-only; DOORBELL reads 0.
        e.write(ID, 0, !0);
        e.write(COMPLETIONS, 5, !0);
        assert_eq!(e.read(ID), ID_VALUE);
        assert_eq!(e.read(COMPLETIONS), 0);
        assert!(!e.write(DOORBELL, 2, !0), "only bit 0 rings");
        assert!(e.write(DOORBELL, 1, !0));
        assert!(
            !e.write(DOORBELL, 1, 0xff00),
            "a masked-off lane does not ring"
        );
        assert_eq!(e.read(DOORBELL), 0);
    }
}
