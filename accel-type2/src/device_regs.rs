//! The memory-device register block at BAR0 + `DEVICE_BLOCK_OFFSET` (CXL r3.1
//! §8.2.8), present when the mailbox is on (Register Locator block id 3).
//!
//! | Offset (block)          | Contents                                          |
//! |-------------------------|---------------------------------------------------|
//! | 0x00                    | Device Capabilities Array Register (§8.2.8.1)     |
//! | 0x10, 0x20, 0x30        | capability headers (§8.2.8.2): status, mailbox, memdev |
//! | DEV_STATUS_CAP_OFFSET   | Device Status: Event Status (§8.2.8.3.1)          |
//! | MEMDEV_STATUS_CAP_OFFSET| Memory Device Status (§8.2.8.5.1)                 |
//! | MAILBOX_CAP_OFFSET      | Primary mailbox (§8.2.8.4), `mailbox` crate; its payload starts on a page boundary |

use cxl_regs::device::{self as devr, mailbox_cap, memdev, status};
use cxl_regs::layout;
use mailbox::{
    FwError, FwInfo, FwPart, HealthInfo, Identify, Mailbox, MailboxEvent, ReturnCode, VendorHooks,
};

use crate::access::{offset_in, qword_half};
use crate::firmware::Firmware;
use crate::DeviceMemory;

/// The three capabilities listed in the array.
const CAP_COUNT: u16 = 3;

/// What the mailbox reaches outside itself: the firmware's vendor-command hook, and
/// device memory for the data Clear Poison writes.
pub struct DeviceHooks<'a> {
    pub fw: &'a mut dyn Firmware,
    pub mem: &'a mut dyn DeviceMemory,
}

impl VendorHooks for DeviceHooks<'_> {
    fn vendor_command(
        &mut self,
        opcode: u16,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), ReturnCode> {
        self.fw.vendor_command(opcode, input, output)
    }

    /// Clear Poison (CXL r3.1 §8.2.9.9.4.3): the command's 64 bytes replace the
    /// poisoned line. The mailbox has checked that the line lies within capacity, so
    /// a failure here is the storage's own: Internal Error, and the poison stays.
    fn media_write(&mut self, dpa: u64, data: &[u8]) -> Result<(), ReturnCode> {
        self.mem.write(dpa, data).map_err(|e| {
            log::warn!("Clear Poison: writing the line at DPA {dpa:#x} failed: {e}");
            ReturnCode::InternalError
        })
    }

    fn identify(&mut self, fields: &mut Identify) {
        self.fw.identify(fields);
    }

    fn health_info(&mut self, health: &mut HealthInfo) {
        self.fw.health_info(health);
    }

    fn fw_info(&mut self, info: &mut FwInfo) {
        self.fw.fw_info(info);
    }

    fn transfer_fw(&mut self, part: &FwPart<'_>) -> Result<(), FwError> {
        self.fw.transfer_fw(part)
    }

    fn activate_fw(&mut self, slot: u8, online: bool) -> Result<(), FwError> {
        self.fw.activate_fw(slot, online)
    }
}

/// The device register block around a mailbox.
pub struct DeviceRegs {
    mailbox: Mailbox,
    doorbells: u64,
    /// Media Status of the Memory Device Status register (`memdev::MEDIA_*`).
    media: u64,
}

impl DeviceRegs {
    pub fn new(mailbox: Mailbox) -> Self {
        Self {
            mailbox,
            doorbells: 0,
            media: memdev::MEDIA_READY,
        }
    }
    /// Set Media Status (§8.2.8.5.1): `memdev::MEDIA_NOT_READY`, `MEDIA_READY`,
    /// `MEDIA_ERROR` or `MEDIA_DISABLED`.
    pub fn set_media_status(&mut self, status: u64) {
        self.media = status & (memdev::STATUS_MEDIA_MASK >> memdev::STATUS_MEDIA_SHIFT);
    }
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
    pub fn mailbox_mut(&mut self) -> &mut Mailbox {
        &mut self.mailbox
    }
    /// Doorbell rings seen (commands submitted).
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    /// The offset within the mailbox registers of the dword at `off`, if it is one.
    fn mailbox_offset(&self, off: u64) -> Option<u32> {
        offset_in(
            off,
            u64::from(layout::MAILBOX_CAP_OFFSET),
            u64::from(self.mailbox.block_len()),
        )
    }

    /// Memory Device Status (§8.2.8.5.1): the media status, mailbox interface
    /// ready.
    pub fn memdev_status(&self) -> u64 {
        (self.media << memdev::STATUS_MEDIA_SHIFT) | memdev::STATUS_MAILBOX_READY
    }

    /// The Device Capabilities Array: Type "memory device", because the class code
    /// (processing accelerator) does not imply the memory-device capabilities.
    fn cap_array() -> u64 {
        devr::cap_array(devr::CAP_ARRAY_TYPE_MEMORY_DEVICE, CAP_COUNT)
    }

    /// Read the dword at `offset` within the block.
    pub fn read(&mut self, offset: u64, now_ns: u64) -> u32 {
        let off = offset & !3;
        if let Some(rel) = self.mailbox_offset(off) {
            return self.mailbox.read(rel, now_ns);
        }
        let headers: [(u16, u8, u32, u32); 3] = [
            (
                devr::CAP_ID_DEVICE_STATUS,
                status::VERSION,
                layout::DEV_STATUS_CAP_OFFSET,
                status::LENGTH,
            ),
            (
                devr::CAP_ID_PRIMARY_MAILBOX,
                mailbox_cap::VERSION,
                layout::MAILBOX_CAP_OFFSET,
                self.mailbox.block_len(),
            ),
            (
                devr::CAP_ID_MEMDEV_STATUS,
                memdev::VERSION,
                layout::MEMDEV_STATUS_CAP_OFFSET,
                memdev::LENGTH,
            ),
        ];
        match off {
            0 => qword_half(Self::cap_array(), false),
            4 => qword_half(Self::cap_array(), true),
            0x10..=0x3f => {
                let k = (off / 0x10) as usize;
                let Some(&(id, ver, offs, len)) = headers.get(k.wrapping_sub(1)) else {
                    return 0;
                };
                match (off % 0x10) as u32 {
                    devr::CAP_HEADER_ID => devr::cap_header_dword0(id, ver),
                    devr::CAP_HEADER_OFFSET => offs,
                    devr::CAP_HEADER_LENGTH => len,
                    _ => 0,
                }
            }
            o if o
                == u64::from(layout::DEV_STATUS_CAP_OFFSET) + u64::from(status::EVENT_STATUS) =>
            {
                self.mailbox.event_status()
            }
            o if o == u64::from(layout::MEMDEV_STATUS_CAP_OFFSET) + u64::from(memdev::STATUS) => {
                qword_half(self.memdev_status(), false)
            }
            o if o
                == u64::from(layout::MEMDEV_STATUS_CAP_OFFSET) + u64::from(memdev::STATUS) + 4 =>
            {
                qword_half(self.memdev_status(), true)
            }
            _ => 0,
        }
    }

    /// Write the masked bits of `value` to the dword at `offset` within the block.
    /// Only the mailbox has writable registers; its commands reach the firmware and
    /// device memory through `hooks`.
    pub fn write(
        &mut self,
        offset: u64,
        value: u32,
        mask: u32,
        now_ns: u64,
        hooks: &mut DeviceHooks<'_>,
    ) -> Option<MailboxEvent> {
        let off = offset & !3;
        let rel = self.mailbox_offset(off)?;
        if rel == cxl_regs::mailbox::CONTROL && value & mask & cxl_regs::mailbox::CTRL_DOORBELL != 0
        {
            self.doorbells = self.doorbells.wrapping_add(1);
        }
        self.mailbox.write(rel, value, mask, now_ns, hooks)
    }
}
