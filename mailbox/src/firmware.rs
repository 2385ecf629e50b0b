//! Firmware slots and the firmware update commands (CXL r3.1 §8.2.9.3: Get FW Info,
//! Transfer FW, Activate FW).
//!
//! Package format of this device: any byte string of at least 16 bytes and at most
//! [`MAX_PACKAGE`] bytes; its first 16 bytes are the revision the slot reports. No
//! image is kept, only its revision and length.

use cxl_regs::mailbox::{
    activate_fw as act, fw_info as info, transfer_fw as xfer, RC_ACTIVATION_FAILED_COLD_RESET,
    RC_ACTIVATION_FAILED_ROLLED_BACK, RC_FW_TRANSFER_IN_PROGRESS, RC_FW_TRANSFER_OUT_OF_ORDER,
    RC_FW_VERIFICATION_FAILED, RC_INVALID_INPUT, RC_INVALID_SLOT,
};
use thiserror::Error;

use crate::hooks::{FwAction, FwInfo, FwPart};
use crate::le;

/// Largest firmware package accepted.
pub const MAX_PACKAGE: usize = 32 << 20;

/// Errors of firmware commands; each maps to a mailbox return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FwError {
    #[error("unknown action {0}")]
    BadAction(u8),
    #[error("slot {0} cannot be used for this operation")]
    InvalidSlot(u8),
    #[error("a partial transfer is already in progress")]
    InProgress,
    #[error("transfer part is out of order")]
    OutOfOrder,
    #[error("package failed verification")]
    Verification,
    #[error("package part is malformed")]
    BadPart,
    #[error("activation failed, the previous firmware runs again")]
    ActivationRolledBack,
    #[error("activation failed, a cold reset is required")]
    ActivationNeedsColdReset,
}

impl FwError {
    /// The return code of §8.2.9.3 for this error.
    pub fn rc(self) -> u16 {
        match self {
            FwError::BadAction(_) | FwError::BadPart => RC_INVALID_INPUT,
            FwError::InvalidSlot(_) => RC_INVALID_SLOT,
            FwError::InProgress => RC_FW_TRANSFER_IN_PROGRESS,
            FwError::OutOfOrder => RC_FW_TRANSFER_OUT_OF_ORDER,
            FwError::Verification => RC_FW_VERIFICATION_FAILED,
            FwError::ActivationRolledBack => RC_ACTIVATION_FAILED_ROLLED_BACK,
            FwError::ActivationNeedsColdReset => RC_ACTIVATION_FAILED_COLD_RESET,
        }
    }
}

/// The check a part must pass besides the mailbox's own (the device's firmware,
/// [`crate::VendorHooks::transfer_fw`] and [`crate::VendorHooks::activate_fw`]).
pub(crate) type PartCheck<'a> = dyn FnMut(&FwPart<'_>) -> Result<(), FwError> + 'a;

#[derive(Debug, Clone)]
struct Transfer {
    /// Bytes received so far.
    received: usize,
    /// First bytes of the package (the revision).
    head: Vec<u8>,
}

/// Firmware slot state.
#[derive(Debug, Clone)]
pub(crate) struct Firmware {
    slots: Vec<Option<[u8; 16]>>,
    /// Active slot, 1-based.
    active: u8,
    /// Slot to activate on the next cold reset, 0 = none.
    staged: u8,
    transfer: Option<Transfer>,
}

fn revision_bytes(s: &str) -> [u8; 16] {
    let mut r = [0u8; 16];
    let b = s.as_bytes();
    let n = b.len().min(16);
    r[..n].copy_from_slice(&b[..n]);
    r
}

impl Firmware {
    /// `slots` supported (clamped to 1..=4), slot 1 active with `revision`.
    pub(crate) fn new(slots: u8, revision: &str) -> Self {
        let n = usize::from(slots.clamp(1, info::MAX_SLOTS));
        let mut v = vec![None; n];
        if let Some(s) = v.first_mut() {
            *s = Some(revision_bytes(revision));
        }
        Self {
            slots: v,
            active: 1,
            staged: 0,
            transfer: None,
        }
    }

    /// Revision of the running firmware (Identify FW Revision).
    pub(crate) fn active_revision(&self) -> [u8; 16] {
        self.slot(self.active).flatten().unwrap_or([0; 16])
    }

    fn slot(&self, s: u8) -> Option<Option<[u8; 16]>> {
        usize::from(s)
            .checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .copied()
    }

    /// A slot the host may write: exists and is not the active one.
    fn writable_slot(&self, s: u8) -> Result<usize, FwError> {
        if s == self.active {
            return Err(FwError::InvalidSlot(s));
        }
        usize::from(s)
            .checked_sub(1)
            .filter(|i| *i < self.slots.len())
            .ok_or(FwError::InvalidSlot(s))
    }

    /// What Get FW Info reports (§8.2.9.3.1).
    pub(crate) fn info(&self) -> FwInfo {
        let mut revisions = [[0u8; 16]; 4];
        for (r, s) in revisions.iter_mut().zip(&self.slots) {
            if let Some(rev) = s {
                *r = *rev;
            }
        }
        FwInfo {
            slots_supported: u8::try_from(self.slots.len()).unwrap_or(info::MAX_SLOTS),
            active_slot: self.active,
            staged_slot: self.staged,
            activation_caps: info::CAP_ONLINE_ACTIVATION,
            revisions,
        }
    }

    /// Get FW Info output (§8.2.9.3.1, Table 8-63) for `fw`.
    pub(crate) fn info_bytes(fw: &FwInfo, out: &mut Vec<u8>) {
        out.clear();
        out.resize(info::OUT_LEN, 0);
        le::put_u8(out, info::SLOTS_SUPPORTED, fw.slots_supported);
        le::put_u8(
            out,
            info::SLOT_INFO,
            (fw.active_slot & info::SLOT_ACTIVE_MASK)
                | ((fw.staged_slot & 0x7) << info::SLOT_STAGED_SHIFT),
        );
        le::put_u8(out, info::ACTIVATION_CAPS, fw.activation_caps);
        let shown = usize::from(fw.slots_supported.min(info::MAX_SLOTS));
        for (i, rev) in fw.revisions.iter().enumerate().take(shown) {
            le::put(out, info::SLOT1_REVISION + i * info::REVISION_LEN, rev);
        }
    }

    fn store(&mut self, slot: usize, head: &[u8], total: usize) -> Result<(), FwError> {
        if total < info::REVISION_LEN {
            return Err(FwError::Verification);
        }
        let rev: [u8; 16] = head
            .get(..info::REVISION_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FwError::Verification)?;
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(rev);
        }
        // A staged activation of the overwritten slot no longer holds.
        if usize::from(self.staged) == slot + 1 {
            self.staged = 0;
        }
        Ok(())
    }

    /// Transfer FW (§8.2.9.3.2) from its raw input (length >= 0x80 checked by
    /// caller). A part that passes this mailbox's checks goes to `check` before it
    /// takes effect; its refusal fails the command and changes nothing.
    pub(crate) fn transfer(
        &mut self,
        input: &[u8],
        check: &mut PartCheck<'_>,
    ) -> Result<(), FwError> {
        let action = le::u8_at(input, xfer::ACTION).unwrap_or(u8::MAX);
        let slot = le::u8_at(input, xfer::SLOT).unwrap_or(0);
        let offset = usize::try_from(le::u32_at(input, xfer::OFFSET).unwrap_or(0))
            .ok()
            .and_then(|o| o.checked_mul(xfer::OFFSET_UNIT))
            .ok_or(FwError::OutOfOrder)?;
        let data = input.get(xfer::DATA..).unwrap_or(&[]);
        let head_of = |d: &[u8]| {
            d.get(..d.len().min(info::REVISION_LEN))
                .unwrap_or(&[])
                .to_vec()
        };
        let part = |action| FwPart {
            action,
            slot,
            offset,
            data,
        };
        match action {
            xfer::ACTION_FULL => {
                if self.transfer.is_some() {
                    return Err(FwError::InProgress);
                }
                if offset != 0 {
                    return Err(FwError::OutOfOrder);
                }
                let s = self.writable_slot(slot)?;
                if data.len() > MAX_PACKAGE || data.len() < info::REVISION_LEN {
                    return Err(FwError::Verification);
                }
                check(&part(FwAction::Full))?;
                self.store(s, data, data.len())
            }
            xfer::ACTION_INITIATE => {
                if self.transfer.is_some() {
                    return Err(FwError::InProgress);
                }
                if offset != 0 {
                    return Err(FwError::OutOfOrder);
                }
                if data.is_empty() || data.len() % xfer::OFFSET_UNIT != 0 {
                    return Err(FwError::BadPart);
                }
                check(&part(FwAction::Initiate))?;
                self.transfer = Some(Transfer {
                    received: data.len(),
                    head: head_of(data),
                });
                Ok(())
            }
            xfer::ACTION_CONTINUE | xfer::ACTION_END => {
                let end = action == xfer::ACTION_END;
                // Check the slot before consuming the part, so the host can retry.
                let slot_idx = if end {
                    Some(self.writable_slot(slot)?)
                } else {
                    None
                };
                let t = self.transfer.as_ref().ok_or(FwError::OutOfOrder)?;
                if offset != t.received {
                    return Err(FwError::OutOfOrder);
                }
                if !end && (data.is_empty() || data.len() % xfer::OFFSET_UNIT != 0) {
                    return Err(FwError::BadPart);
                }
                let total = t
                    .received
                    .checked_add(data.len())
                    .filter(|t| *t <= MAX_PACKAGE);
                let Some(total) = total else {
                    self.transfer = None;
                    return Err(FwError::Verification);
                };
                let mut head = t.head.clone();
                if head.len() < info::REVISION_LEN {
                    let need = info::REVISION_LEN - head.len();
                    head.extend_from_slice(&data[..data.len().min(need)]);
                }
                if end && (total < info::REVISION_LEN || head.len() < info::REVISION_LEN) {
                    self.transfer = None;
                    return Err(FwError::Verification);
                }
                // A part the firmware refuses ends the transfer: the package is bad.
                if let Err(e) = check(&part(if end {
                    FwAction::End
                } else {
                    FwAction::Continue
                })) {
                    self.transfer = None;
                    return Err(e);
                }
                let Some(s) = slot_idx else {
                    self.transfer = Some(Transfer {
                        received: total,
                        head,
                    });
                    return Ok(());
                };
                self.transfer = None;
                self.store(s, &head, total)
            }
            xfer::ACTION_ABORT => {
                // Announced; the firmware cannot refuse an abort.
                let _ = check(&part(FwAction::Abort));
                self.transfer = None;
                Ok(())
            }
            a => Err(FwError::BadAction(a)),
        }
    }

    /// Activate FW (§8.2.9.3.3). Online activation takes effect at once. A request
    /// that passes this mailbox's checks goes to `check` (slot, online) first; its
    /// refusal fails the command and changes nothing.
    pub(crate) fn activate(
        &mut self,
        input: &[u8],
        check: &mut dyn FnMut(u8, bool) -> Result<(), FwError>,
    ) -> Result<(), FwError> {
        let action = le::u8_at(input, act::ACTION).unwrap_or(u8::MAX);
        let slot = le::u8_at(input, act::SLOT).unwrap_or(0);
        if action != act::ACTION_ONLINE && action != act::ACTION_COLD_RESET {
            return Err(FwError::BadAction(action));
        }
        if slot == self.active || !matches!(self.slot(slot), Some(Some(_))) {
            return Err(FwError::InvalidSlot(slot));
        }
        let online = action == act::ACTION_ONLINE;
        check(slot, online)?;
        if online {
            self.active = slot;
            self.staged = 0;
        } else {
            self.staged = slot;
        }
        Ok(())
    }

    /// A conventional reset aborts a partial transfer.
    pub(crate) fn abort_transfer(&mut self) {
        self.transfer = None;
    }

    /// A cold reset activates the staged slot.
    pub(crate) fn cold_reset(&mut self) {
        self.transfer = None;
        if self.staged != 0 {
            self.active = self.staged;
            self.staged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xfer(f: &mut Firmware, input: &[u8]) -> Result<(), FwError> {
        f.transfer(input, &mut |_| Ok(()))
    }

    fn act(f: &mut Firmware, input: &[u8]) -> Result<(), FwError> {
        f.activate(input, &mut |_, _| Ok(()))
    }

    fn part(action: u8, slot: u8, offset_units: u32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; xfer::DATA];
        v[xfer::ACTION] = action;
        v[xfer::SLOT] = slot;
        v[xfer::OFFSET..xfer::OFFSET + 4].copy_from_slice(&offset_units.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn partial_transfer_then_activate() {
        let mut f = Firmware::new(2, "v1");
        let mut img = b"new-revision-0002".to_vec();
        img.resize(300, 0xaa);
        assert_eq!(xfer(&mut f, &part(1, 0, 0, &img[..128])), Ok(()));
        assert_eq!(
            xfer(&mut f, &part(1, 0, 0, &img[..128])),
            Err(FwError::InProgress)
        );
        assert_eq!(
            xfer(&mut f, &part(2, 0, 2, &img[128..256])),
            Err(FwError::OutOfOrder)
        );
        assert_eq!(xfer(&mut f, &part(2, 0, 1, &img[128..256])), Ok(()));
        assert_eq!(
            xfer(&mut f, &part(3, 1, 2, &img[256..])),
            Err(FwError::InvalidSlot(1))
        );
        assert_eq!(xfer(&mut f, &part(3, 2, 2, &img[256..])), Ok(()));
        let mut out = Vec::new();
        Firmware::info_bytes(&f.info(), &mut out);
        assert_eq!(&out[0x20..0x30], b"new-revision-000");
        assert_eq!(act(&mut f, &[0, 1]), Err(FwError::InvalidSlot(1)));
        assert_eq!(act(&mut f, &[1, 2]), Ok(()));
        Firmware::info_bytes(&f.info(), &mut out);
        assert_eq!(out[info::SLOT_INFO], 1 | (2 << 3));
        f.cold_reset();
        assert_eq!(&f.active_revision(), b"new-revision-000");
    }

    #[test]
    fn full_transfer_checks() {
        let mut f = Firmware::new(3, "v1");
        assert_eq!(
            xfer(&mut f, &part(0, 2, 0, b"short")),
            Err(FwError::Verification)
        );
        assert_eq!(
            xfer(&mut f, &part(0, 4, 0, &[1; 32])),
            Err(FwError::InvalidSlot(4))
        );
        assert_eq!(
            xfer(&mut f, &part(0, 0, 0, &[1; 32])),
            Err(FwError::InvalidSlot(0))
        );
        assert_eq!(
            xfer(&mut f, &part(0, 3, 1, &[1; 32])),
            Err(FwError::OutOfOrder)
        );
        assert_eq!(
            xfer(&mut f, &part(9, 3, 0, &[1; 32])),
            Err(FwError::BadAction(9))
        );
        assert_eq!(
            xfer(&mut f, &part(2, 3, 0, &[1; 128])),
            Err(FwError::OutOfOrder)
        );
        assert_eq!(xfer(&mut f, &part(0, 3, 0, &[1; 32])), Ok(()));
        assert_eq!(act(&mut f, &[0, 2]), Err(FwError::InvalidSlot(2)));
        assert_eq!(act(&mut f, &[0, 3]), Ok(()));
        assert_eq!(f.active_revision(), [1; 16]);
    }
}
