//! What each kind of reset does to each class of device state, defined once.
//!
//! The device model applies a reset by asking [`effect`] about every class of state
//! it holds; nothing else decides what a reset keeps.
//!
//! | Class                  | Conventional | FLR  | CXL Reset              |
//! |------------------------|--------------|------|------------------------|
//! | `PciFunction`          | reset        | reset| reset                  |
//! | `PcieLink`             | reset        | kept | kept                   |
//! | `Sticky`               | kept         | kept | kept                   |
//! | `MsixTable`            | reset        | reset| reset                  |
//! | `DmaEngine`            | reset        | reset| reset                  |
//! | `MailboxRegisters`     | reset        | reset| reset                  |
//! | `DeviceStorage`        | kept         | kept | kept                   |
//! | `DvsecLockable`        | reset        | kept | reset unless locked    |
//! | `DvsecControl2`        | reset        | kept | reset                  |
//! | `HdmDecoders`          | reset        | kept | reset unless locked    |
//! | `HdmGlobalControl`     | reset        | kept | reset                  |
//! | `DeviceMemory`         | kept         | kept | cleared if Mem Clr     |
//!
//! The reasons, from the specifications:
//! - Conventional reset (PCIe r6 §6.6.1; CXL r3.1 §9.1 and §9.2: hot reset such as a
//!   secondary bus reset, warm reset, and power-on; vfio DEVICE_RESET): every
//!   register returns to its default value except the sticky ones (RWS, RW1CS, ROS:
//!   PCIe r6 §7.4, CXL r3.1 Table 8-1). CONFIG_LOCK and Lock On Commit are released
//!   (CXL r3.1 §8.1.3.6, Table 8-1 RWL). Afterwards firmware commits its power-on
//!   decoders again, as a BIOS does. Device memory is kept: DVSEC CXL Capability3
//!   says volatile HDM is preserved across warm and hot reset (§8.1.3.16).
//! - FLR (PCIe r6 §6.6.2; CXL r3.1 §9.5): the function's registers return to their
//!   defaults except sticky, HwInit and the link-specific fields PCIe lists
//!   (Max_Payload_Size, Link Control, Link Control 2 Hardware Autonomous Speed
//!   Disable, Link Equalization Request). "FLRs do not affect the CXL.cache and
//!   CXL.mem protocols. Any CXL.cache-related and CXL.mem-related control registers,
//!   including CXL DVSEC structures and state held by the CXL device, are not
//!   affected by FLRs. The memory controller that hosts the HDM is not reset by an
//!   FLR" (§9.5): the whole CXL Device DVSEC, the HDM decoders and their lock, HDM
//!   Global Control and device memory are untouched.
//! - CXL Reset (CXL r3.1 §9.7): CXL.io is reset with the scope of an FLR, and "all
//!   non-sticky registers defined in this specification shall be initialized to their
//!   default values", except CONFIG_LOCK and the fields it locks (§8.1.3.6). A locked
//!   RWL field is "not affected by CXL Reset after the bits are locked" (Table 8-1):
//!   a decoder committed with Lock On Commit stays committed. Volatile HDM is cleared
//!   only when CXL Reset Mem Clr Enable asks for it (§9.7.1).
//!
//! The mailbox (CXL r3.1 §8.2.8.4) is read as two classes. Its registers (Control,
//! Command, Status, Background Command Status, the payload), a background command in
//! flight, a partial firmware transfer and the event interrupt policy are the
//! function's interface: every reset returns them to defaults (an FLR must clear
//! software-readable state of the previous user, PCIe r6 §6.6.2, and the payload can
//! hold any). The LSA, the event records, the poison list, the firmware slots and the
//! timestamp are state held by the device for its memory (§9.5): no reset here
//! clears them. A power cycle with the daemon's restart does (except what lives in
//! the `--memory-file` and `--lsa-file` files).

/// A kind of reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// Conventional reset: hot reset (secondary bus reset), warm reset or power-on;
    /// what a vfio DEVICE_RESET asks for (PCIe r6 §6.6.1).
    Conventional,
    /// Function Level Reset, Initiate FLR in Device Control (PCIe r6 §6.6.2, CXL
    /// r3.1 §9.5).
    Flr,
    /// CXL Reset, Initiate CXL Reset in DVSEC CXL Control2 (CXL r3.1 §9.7).
    CxlReset,
}

impl ResetKind {
    pub const ALL: [ResetKind; 3] = [Self::Conventional, Self::Flr, Self::CxlReset];
}

/// A class of device state that every kind of reset treats alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterClass {
    /// The function's config registers: the Type-0 header (Command, Status, BARs,
    /// Cache Line Size, Interrupt Line), Power Management Control/Status, PCIe
    /// Device Control (but Max_Payload_Size), Device Status, Device Control 2, MSI-X
    /// Message Control, the DOE mailbox (an exchange in progress is aborted, PCIe r6
    /// §6.30.2); and the interrupts the function has raised.
    PciFunction,
    /// Link-specific config fields that an FLR leaves alone (PCIe r6 §6.6.2).
    PcieLink,
    /// Sticky registers (RWS, RW1CS, ROS): Link Control 2's RWS fields, Flex Bus
    /// Port Status error bits, the whole RAS capability (CXL r3.1 §8.2.4.17).
    Sticky,
    /// The MSI-X table and PBA (PCIe r6 §7.7.2).
    MsixTable,
    /// The DMA engine's registers and any transfer it runs.
    DmaEngine,
    /// The mailbox registers and what is in flight through them (see above).
    MailboxRegisters,
    /// LSA, event records, poison list, firmware slots, timestamp.
    DeviceStorage,
    /// DVSEC CXL Control, Range 1/2 Base (RWL) and the CONFIG_LOCK that locks them
    /// (CXL r3.1 §8.1.3.2, §8.1.3.6, §8.1.3.8).
    DvsecLockable,
    /// DVSEC CXL Control2 and Status2 (CXL r3.1 §8.1.3.4, §8.1.3.5).
    DvsecControl2,
    /// The HDM decoders (CXL r3.1 §8.2.4.20.3-.11), with their Lock On Commit.
    HdmDecoders,
    /// HDM Decoder Global Control (CXL r3.1 §8.2.4.20.2).
    HdmGlobalControl,
    /// Device memory (volatile HDM).
    DeviceMemory,
}

impl RegisterClass {
    pub const ALL: [RegisterClass; 12] = [
        Self::PciFunction,
        Self::PcieLink,
        Self::Sticky,
        Self::MsixTable,
        Self::DmaEngine,
        Self::MailboxRegisters,
        Self::DeviceStorage,
        Self::DvsecLockable,
        Self::DvsecControl2,
        Self::HdmDecoders,
        Self::HdmGlobalControl,
        Self::DeviceMemory,
    ];
}

/// What a reset does to a class of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Untouched.
    Kept,
    /// Back to its power-on value.
    Reset,
    /// Back to its power-on value unless locked: a decoder committed with Lock On
    /// Commit, or DVSEC fields under CONFIG_LOCK.
    ResetUnlessLocked,
    /// Zeroed when the reset was asked to clear memory, kept otherwise.
    ClearedOnRequest,
}

/// The effect of a reset of `kind` on state of `class` (see the module table).
pub const fn effect(class: RegisterClass, kind: ResetKind) -> Effect {
    use Effect::*;
    use RegisterClass as C;
    use ResetKind as K;
    match (class, kind) {
        (C::Sticky | C::DeviceStorage, _) => Kept,
        (C::PciFunction | C::MsixTable | C::DmaEngine | C::MailboxRegisters, _) => Reset,
        (C::DeviceMemory, K::CxlReset) => ClearedOnRequest,
        (C::DeviceMemory, _) => Kept,
        (_, K::Conventional) => Reset,
        (_, K::Flr) => Kept,
        (C::PcieLink, K::CxlReset) => Kept,
        (C::DvsecLockable | C::HdmDecoders, K::CxlReset) => ResetUnlessLocked,
        (C::DvsecControl2 | C::HdmGlobalControl, K::CxlReset) => Reset,
    }
}

/// Whether state of `class` that is `locked` survives a reset of `kind`. Memory is
/// not a register: see [`Effect::ClearedOnRequest`].
pub const fn keeps(class: RegisterClass, kind: ResetKind, locked: bool) -> bool {
    match effect(class, kind) {
        Effect::Kept | Effect::ClearedOnRequest => true,
        Effect::Reset => false,
        Effect::ResetUnlessLocked => locked,
    }
}
