//! vfio-user wire format: the message header, the command bodies the server
//! accepts, and the reply bodies it sends. Pure functions over byte slices, with
//! no I/O, so that the decoder can be unit-tested and fuzzed on its own.
//!
//! Every decoder checks lengths before it reads, every size that comes from the
//! peer is bounded before it is used, and no arithmetic on peer input can
//! overflow. Errors carry the errno that goes back to the client.
//!
//! Layouts follow the vfio-user specification (QEMU docs/devel/vfio-user.rst)
//! and what QEMU's client (hw/vfio-user/) sends and accepts. All integers are
//! little-endian (the protocol uses host order; both ends are x86-64 or another
//! little-endian host here).

use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use super::{Errno, RegionInfo};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Largest data transfer (REGION_READ/WRITE count) the server accepts, and the
/// `max_data_xfer_size` it announces. QEMU's default; QEMU never sends more.
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Most fds the server accepts with one message, and the `max_msg_fds` it
/// announces (QEMU's own maximum). Further fds are closed unread.
pub const MAX_MSG_FDS: usize = 16;

/// Largest message (header included) the server reads into memory: a
/// REGION_WRITE of `MAX_DATA_XFER_SIZE` plus its fixed part, with room to
/// spare for a VERSION message's capability string. Anything bigger is
/// answered with EMSGSIZE.
pub const MAX_MESSAGE_SIZE: u32 = MAX_DATA_XFER_SIZE + 4096;

/// Messages bigger than `MAX_MESSAGE_SIZE` but no bigger than this are read
/// and thrown away (in fixed-size chunks, nothing allocated) so that the
/// connection survives; bigger ones end the connection.
pub const MAX_DRAIN_SIZE: u32 = 64 << 20;

/// Upper bound on `count` in SET_IRQS: the largest MSI-X table (2048 vectors).
pub const MAX_IRQ_COUNT: u32 = 2048;

/// IOMMU page sizes announced to the client (4 KiB pages).
pub const PGSIZES: u64 = 4096;

/// The protocol version this server speaks. QEMU (>= 10.1) sends 0.0 and
/// refuses a reply with a higher minor; the reply carries the lower of the two.
pub const VERSION_MAJOR: u16 = 0;
pub const VERSION_MINOR: u16 = 1;

/// Header flags: message type in bits 3:0.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
pub const TYPE_COMMAND: u32 = 0;
pub const TYPE_REPLY: u32 = 1;
/// The sender wants no reply (posted write).
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error; `error` holds the errno.
pub const FLAG_ERROR: u32 = 1 << 5;

/// Size of `struct vfio_region_info` on the wire.
pub const REGION_INFO_SIZE: u32 = 32;
/// Size of the sparse mmap capability header plus its area count.
const SPARSE_CAP_HEADER_SIZE: u32 = 16;
/// Size of one sparse mmap area (offset, size).
const SPARSE_AREA_SIZE: u32 = 16;
/// Size of the fixed part of REGION_READ / REGION_WRITE.
pub const REGION_ACCESS_SIZE: usize = 16;

/// Why a message could not be decoded. Each maps to the errno sent back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message size {0} is smaller than the header")]
    SizeBelowHeader(u32),
    #[error("message body of {got} bytes is shorter than the {need} bytes {what} needs")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{what}: invalid value {value:#x}")]
    Invalid { what: &'static str, value: u64 },
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("malformed capabilities: {0}")]
    Capabilities(String),
}

impl ProtocolError {
    /// The errno the client is told.
    pub fn errno(&self) -> Errno {
        match self {
            ProtocolError::Unsupported(_) => libc::ENOTSUP,
            _ => libc::EINVAL,
        }
    }
}

type Result<T> = std::result::Result<T, ProtocolError>;

/// vfio-user commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DmaRead = 11,
    DmaWrite = 12,
    DeviceReset = 13,
    DirtyPages = 14,
    RegionWriteMulti = 15,
}

impl Command {
    /// Highest command number known.
    pub const MAX: u16 = 15;

    pub fn from_u16(v: u16) -> Option<Command> {
        Some(match v {
            1 => Command::Version,
            2 => Command::DmaMap,
            3 => Command::DmaUnmap,
            4 => Command::DeviceGetInfo,
            5 => Command::DeviceGetRegionInfo,
            6 => Command::DeviceGetRegionIoFds,
            7 => Command::DeviceGetIrqInfo,
            8 => Command::DeviceSetIrqs,
            9 => Command::RegionRead,
            10 => Command::RegionWrite,
            11 => Command::DmaRead,
            12 => Command::DmaWrite,
            13 => Command::DeviceReset,
            14 => Command::DirtyPages,
            15 => Command::RegionWriteMulti,
            _ => return None,
        })
    }

    /// A short name, for logs and statistics.
    pub fn name(v: u16) -> &'static str {
        match Command::from_u16(v) {
            Some(Command::Version) => "version",
            Some(Command::DmaMap) => "dma_map",
            Some(Command::DmaUnmap) => "dma_unmap",
            Some(Command::DeviceGetInfo) => "device_get_info",
            Some(Command::DeviceGetRegionInfo) => "device_get_region_info",
            Some(Command::DeviceGetRegionIoFds) => "device_get_region_io_fds",
            Some(Command::DeviceGetIrqInfo) => "device_get_irq_info",
            Some(Command::DeviceSetIrqs) => "device_set_irqs",
            Some(Command::RegionRead) => "region_read",
            Some(Command::RegionWrite) => "region_write",
            Some(Command::DmaRead) => "dma_read",
            Some(Command::DmaWrite) => "dma_write",
            Some(Command::DeviceReset) => "device_reset",
            Some(Command::DirtyPages) => "dirty_pages",
            Some(Command::RegionWriteMulti) => "region_write_multi",
            None => "unknown",
        }
    }
}

/// The 16-byte header that starts every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    /// Message size, header included.
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    pub fn msg_type(&self) -> u32 {
        self.flags & FLAGS_TYPE_MASK
    }

    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// Length of the body that follows the header.
    pub fn body_len(&self) -> Result<u32> {
        self.size
            .checked_sub(HEADER_SIZE as u32)
            .ok_or(ProtocolError::SizeBelowHeader(self.size))
    }

    /// The header of a successful reply to `self`, for a body of `body_len`.
    pub fn reply(&self, body_len: u32) -> Header {
        Header {
            id: self.id,
            command: self.command,
            size: (HEADER_SIZE as u32).saturating_add(body_len),
            flags: TYPE_REPLY,
            error: 0,
        }
    }

    /// The header of an error reply to `self`.
    pub fn error_reply(&self, errno: Errno) -> Header {
        Header {
            id: self.id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: TYPE_REPLY | FLAG_ERROR,
            error: u32::try_from(errno).unwrap_or(libc::EINVAL as u32),
        }
    }
}

/// Bounds-checked little-endian reader over a message body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, which must hold at least `need` bytes.
    fn new(buf: &'a [u8], need: usize, what: &'static str) -> Result<Reader<'a>> {
        if buf.len() < need {
            return Err(ProtocolError::Truncated {
                what,
                need,
                got: buf.len(),
            });
        }
        Ok(Reader { buf, pos: 0, what })
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let end = self.pos.checked_add(N);
        let slice =
            end.and_then(|end| self.buf.get(self.pos..end))
                .ok_or(ProtocolError::Truncated {
                    what: self.what,
                    need: self.pos.saturating_add(N),
                    got: self.buf.len(),
                })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        // `end` above: pos + N did not overflow.
        self.pos = self.pos.saturating_add(N);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        self.bytes::<2>().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
}

fn invalid(what: &'static str, value: impl Into<u64>) -> ProtocolError {
    ProtocolError::Invalid {
        what,
        value: value.into(),
    }
}

/// The capabilities a client announces in VERSION (spec defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    /// Most fds the client accepts in one message.
    pub max_msg_fds: u32,
    /// Largest data transfer the client accepts.
    pub max_data_xfer_size: u32,
    pub pgsizes: u64,
}

impl Default for ClientCaps {
    fn default() -> Self {
        ClientCaps {
            max_msg_fds: 1,
            max_data_xfer_size: MAX_DATA_XFER_SIZE,
            pgsizes: PGSIZES,
        }
    }
}

/// VERSION request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRequest {
    pub major: u16,
    pub minor: u16,
    pub caps: ClientCaps,
}

impl VersionRequest {
    pub fn decode(body: &[u8]) -> Result<VersionRequest> {
        let mut r = Reader::new(body, 4, "VERSION")?;
        let major = r.u16()?;
        let minor = r.u16()?;
        let caps = parse_client_caps(r.rest())?;
        Ok(VersionRequest { major, minor, caps })
    }
}

fn caps_error(msg: &str) -> ProtocolError {
    ProtocolError::Capabilities(msg.to_string())
}

/// Parses the JSON capability string of a VERSION request: an optional,
/// NUL-terminated JSON object `{"capabilities": {...}}`. Unknown members are
/// ignored, known ones must have the right type.
fn parse_client_caps(raw: &[u8]) -> Result<ClientCaps> {
    let mut caps = ClientCaps::default();
    // The string is NUL-terminated; anything after the first NUL is padding.
    let text = match raw.iter().position(|&b| b == 0) {
        Some(nul) => raw.get(..nul).unwrap_or(&[]),
        None => raw,
    };
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(caps);
    }
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ProtocolError::Capabilities(e.to_string()))?;
    let top = value
        .as_object()
        .ok_or_else(|| caps_error("not a JSON object"))?;
    let Some(inner) = top.get("capabilities") else {
        return Ok(caps);
    };
    let inner = inner
        .as_object()
        .ok_or_else(|| caps_error("\"capabilities\" is not an object"))?;
    let num = |name: &str| -> Result<Option<u64>> {
        match inner.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| caps_error(&format!("\"{name}\" is not an unsigned integer"))),
        }
    };
    if let Some(v) = num("max_msg_fds")? {
        caps.max_msg_fds = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = num("max_data_xfer_size")? {
        caps.max_data_xfer_size = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = num("pgsizes")? {
        caps.pgsizes = v;
    }
    Ok(caps)
}

/// The body of our VERSION reply: version, then the NUL-terminated JSON
/// capabilities, with `max_dma_maps` when the device bounds its DMA mappings.
/// Kept short: QEMU's reply buffer is the size of its request.
pub fn encode_version_reply(client_minor: u16, max_dma_maps: Option<u32>, out: &mut Vec<u8>) {
    out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    out.extend_from_slice(&client_minor.min(VERSION_MINOR).to_le_bytes());
    let maps = max_dma_maps
        .map(|n| format!(",\"max_dma_maps\":{n}"))
        .unwrap_or_default();
    let caps = format!(
        "{{\"capabilities\":{{\"max_msg_fds\":{MAX_MSG_FDS},\"max_data_xfer_size\":{MAX_DATA_XFER_SIZE},\"pgsizes\":{PGSIZES}{maps}}}}}"
    );
    out.extend_from_slice(caps.as_bytes());
    out.push(0);
}

/// DMA_MAP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapRequest {
    pub flags: u32,
    pub offset: u64,
    pub iova: u64,
    pub size: u64,
}

impl DmaMapRequest {
    pub const SIZE: usize = 32;

    pub fn decode(body: &[u8]) -> Result<DmaMapRequest> {
        let mut r = Reader::new(body, Self::SIZE, "DMA_MAP")?;
        let _argsz = r.u32()?;
        let flags = r.u32()?;
        let offset = r.u64()?;
        let iova = r.u64()?;
        let size = r.u64()?;
        if flags & !(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0 {
            return Err(invalid("DMA_MAP flags", flags));
        }
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(invalid("DMA_MAP size", size));
        }
        if offset.checked_add(size).is_none() {
            return Err(invalid("DMA_MAP offset", offset));
        }
        Ok(DmaMapRequest {
            flags,
            offset,
            iova,
            size,
        })
    }

    pub fn readable(&self) -> bool {
        self.flags & VFIO_DMA_MAP_FLAG_READ != 0
    }

    pub fn writable(&self) -> bool {
        self.flags & VFIO_DMA_MAP_FLAG_WRITE != 0
    }
}

/// DMA_UNMAP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmapRequest {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

impl DmaUnmapRequest {
    pub const SIZE: usize = 24;

    pub fn decode(body: &[u8]) -> Result<DmaUnmapRequest> {
        let mut r = Reader::new(body, Self::SIZE, "DMA_UNMAP")?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let iova = r.u64()?;
        let size = r.u64()?;
        if flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            return Err(ProtocolError::Unsupported("DMA_UNMAP dirty bitmap"));
        }
        if flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            return Err(invalid("DMA_UNMAP flags", flags));
        }
        if flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            if iova != 0 || size != 0 {
                return Err(invalid("DMA_UNMAP all with a range", size));
            }
        } else if size == 0 || iova.checked_add(size).is_none() {
            return Err(invalid("DMA_UNMAP size", size));
        }
        Ok(DmaUnmapRequest {
            argsz,
            flags,
            iova,
            size,
        })
    }

    pub fn all(&self) -> bool {
        self.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0
    }

    /// The reply body: the request's fields, echoed.
    pub fn encode_reply(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(Self::SIZE as u32).to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.iova.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
    }
}

/// DEVICE_GET_INFO: the request carries only `argsz` (and zeroed fields).
pub const DEVICE_INFO_SIZE: u32 = 16;

pub fn decode_device_get_info(body: &[u8]) -> Result<()> {
    let mut r = Reader::new(body, 4, "DEVICE_GET_INFO")?;
    let argsz = r.u32()?;
    if argsz < DEVICE_INFO_SIZE {
        return Err(invalid("DEVICE_GET_INFO argsz", argsz));
    }
    Ok(())
}

pub fn encode_device_info(flags: u32, num_regions: u32, num_irqs: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&DEVICE_INFO_SIZE.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&num_regions.to_le_bytes());
    out.extend_from_slice(&num_irqs.to_le_bytes());
}

/// DEVICE_GET_REGION_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfoRequest {
    pub argsz: u32,
    pub index: u32,
}

impl RegionInfoRequest {
    pub fn decode(body: &[u8]) -> Result<RegionInfoRequest> {
        let mut r = Reader::new(body, REGION_INFO_SIZE as usize, "DEVICE_GET_REGION_INFO")?;
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        if argsz < REGION_INFO_SIZE {
            return Err(invalid("DEVICE_GET_REGION_INFO argsz", argsz));
        }
        Ok(RegionInfoRequest { argsz, index })
    }
}

/// Encodes a region info reply body for a client buffer of `client_argsz`.
///
/// With sparse areas, the VFIO_REGION_INFO_CAP_SPARSE_MMAP capability follows
/// the fixed part. When it does not fit in `client_argsz`, the reply holds only
/// the fixed part with `argsz` set to the size needed, as the kernel does; QEMU
/// then asks again with a bigger buffer. `cap_offset` still points past the
/// fixed part, because QEMU rejects a CAPS flag with a smaller offset.
///
/// `has_fd` says whether an fd goes with the reply: the MMAP flag is only set
/// when it does (a client cannot map a region without one).
pub fn encode_region_info(
    index: u32,
    info: &RegionInfo,
    client_argsz: u32,
    has_fd: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut flags = 0;
    if info.readable {
        flags |= VFIO_REGION_INFO_FLAG_READ;
    }
    if info.writable {
        flags |= VFIO_REGION_INFO_FLAG_WRITE;
    }
    let mmap = info.mmappable && has_fd;
    if mmap {
        flags |= VFIO_REGION_INFO_FLAG_MMAP;
    }
    let areas: &[(u64, u64)] = if mmap { &info.sparse_mmap } else { &[] };
    let mut argsz = REGION_INFO_SIZE;
    let mut cap_offset = 0;
    if !areas.is_empty() {
        let nr =
            u32::try_from(areas.len()).map_err(|_| invalid("sparse areas", areas.len() as u64))?;
        let cap_len = nr
            .checked_mul(SPARSE_AREA_SIZE)
            .and_then(|a| a.checked_add(SPARSE_CAP_HEADER_SIZE))
            .and_then(|c| c.checked_add(REGION_INFO_SIZE))
            .filter(|&total| total <= MAX_MESSAGE_SIZE)
            .ok_or_else(|| invalid("sparse areas", u64::from(nr)))?;
        argsz = cap_len;
        flags |= VFIO_REGION_INFO_FLAG_CAPS;
        cap_offset = REGION_INFO_SIZE;
    }
    out.extend_from_slice(&argsz.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&cap_offset.to_le_bytes());
    out.extend_from_slice(&info.size.to_le_bytes());
    out.extend_from_slice(&info.fd_offset.to_le_bytes());
    if !areas.is_empty() && client_argsz >= argsz {
        // struct vfio_info_cap_header: id, version, next (0: last).
        out.extend_from_slice(&(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(areas.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for &(offset, size) in areas {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
    }
    Ok(())
}

/// DEVICE_GET_IRQ_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfoRequest {
    pub argsz: u32,
    pub index: u32,
}

/// Size of `struct vfio_irq_info`.
pub const IRQ_INFO_SIZE: u32 = 16;

impl IrqInfoRequest {
    pub fn decode(body: &[u8]) -> Result<IrqInfoRequest> {
        let mut r = Reader::new(body, IRQ_INFO_SIZE as usize, "DEVICE_GET_IRQ_INFO")?;
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        if argsz < IRQ_INFO_SIZE {
            return Err(invalid("DEVICE_GET_IRQ_INFO argsz", argsz));
        }
        Ok(IrqInfoRequest { argsz, index })
    }
}

pub fn encode_irq_info(index: u32, flags: u32, count: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&IRQ_INFO_SIZE.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

/// DEVICE_SET_IRQS request. The eventfds (DATA_EVENTFD) come over SCM_RIGHTS;
/// the bools (DATA_BOOL) follow the fixed part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIrqsRequest {
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    /// One entry per vector for DATA_BOOL, empty otherwise.
    pub bools: Vec<bool>,
}

impl SetIrqsRequest {
    pub const SIZE: usize = 20;

    pub fn decode(body: &[u8]) -> Result<SetIrqsRequest> {
        let mut r = Reader::new(body, Self::SIZE, "DEVICE_SET_IRQS")?;
        let _argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let start = r.u32()?;
        let count = r.u32()?;
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
            || !matches!(
                data,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
            )
            || !matches!(
                action,
                VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER
            )
        {
            return Err(invalid("DEVICE_SET_IRQS flags", flags));
        }
        if count > MAX_IRQ_COUNT || start.checked_add(count).is_none() {
            return Err(invalid("DEVICE_SET_IRQS count", count));
        }
        let mut bools = Vec::new();
        if data == VFIO_IRQ_SET_DATA_BOOL {
            let raw = r.rest();
            let raw = raw.get(..count as usize).ok_or(ProtocolError::Truncated {
                what: "DEVICE_SET_IRQS bools",
                need: Self::SIZE.saturating_add(count as usize),
                got: body.len(),
            })?;
            bools = raw.iter().map(|&b| b != 0).collect();
        }
        Ok(SetIrqsRequest {
            flags,
            index,
            start,
            count,
            bools,
        })
    }

    pub fn data_type(&self) -> u32 {
        self.flags & VFIO_IRQ_SET_DATA_TYPE_MASK
    }
}

/// REGION_READ / REGION_WRITE fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccess {
    fn decode_fixed(body: &[u8], what: &'static str) -> Result<RegionAccess> {
        let mut r = Reader::new(body, REGION_ACCESS_SIZE, what)?;
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        if count == 0 || count > MAX_DATA_XFER_SIZE {
            return Err(invalid("region access count", count));
        }
        if offset.checked_add(u64::from(count)).is_none() {
            return Err(invalid("region access offset", offset));
        }
        Ok(RegionAccess {
            offset,
            region,
            count,
        })
    }

    /// REGION_READ: the fixed part only.
    pub fn decode_read(body: &[u8]) -> Result<RegionAccess> {
        Self::decode_fixed(body, "REGION_READ")
    }

    /// REGION_WRITE: the fixed part and the data, whose length must be `count`.
    pub fn decode_write(body: &[u8]) -> Result<(RegionAccess, &[u8])> {
        let access = Self::decode_fixed(body, "REGION_WRITE")?;
        let data = body.get(REGION_ACCESS_SIZE..).unwrap_or(&[]);
        if data.len() != access.count as usize {
            return Err(ProtocolError::Truncated {
                what: "REGION_WRITE data",
                need: REGION_ACCESS_SIZE.saturating_add(access.count as usize),
                got: body.len(),
            });
        }
        Ok((access, data))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.region.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
    }
}

/// A decoded command: what the server dispatches on. [`Request::decode`] is
/// the whole message decoder, and the natural target for fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Version(VersionRequest),
    DmaMap(DmaMapRequest),
    DmaUnmap(DmaUnmapRequest),
    DeviceGetInfo,
    RegionInfo(RegionInfoRequest),
    IrqInfo(IrqInfoRequest),
    SetIrqs(SetIrqsRequest),
    RegionRead(RegionAccess),
    /// The access, and its data (exactly `count` bytes).
    RegionWrite(RegionAccess, &'a [u8]),
    DeviceReset,
    /// A known command this server does not implement.
    Unsupported(Command),
}

impl<'a> Request<'a> {
    /// Decodes the body of a `command` message. Never panics, and allocates
    /// at most `body.len()` bytes.
    pub fn decode(command: Command, body: &'a [u8]) -> Result<Request<'a>> {
        Ok(match command {
            Command::Version => Request::Version(VersionRequest::decode(body)?),
            Command::DmaMap => Request::DmaMap(DmaMapRequest::decode(body)?),
            Command::DmaUnmap => Request::DmaUnmap(DmaUnmapRequest::decode(body)?),
            Command::DeviceGetInfo => {
                decode_device_get_info(body)?;
                Request::DeviceGetInfo
            }
            Command::DeviceGetRegionInfo => Request::RegionInfo(RegionInfoRequest::decode(body)?),
            Command::DeviceGetIrqInfo => Request::IrqInfo(IrqInfoRequest::decode(body)?),
            Command::DeviceSetIrqs => Request::SetIrqs(SetIrqsRequest::decode(body)?),
            Command::RegionRead => Request::RegionRead(RegionAccess::decode_read(body)?),
            Command::RegionWrite => {
                let (access, data) = RegionAccess::decode_write(body)?;
                Request::RegionWrite(access, data)
            }
            Command::DeviceReset => Request::DeviceReset,
            Command::DeviceGetRegionIoFds
            | Command::DmaRead
            | Command::DmaWrite
            | Command::DirtyPages
            | Command::RegionWriteMulti => Request::Unsupported(command),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_flags() {
        let h = Header {
            id: 0x1234,
            command: 9,
            size: 0x20,
            flags: TYPE_COMMAND | FLAG_NO_REPLY,
            error: 0,
        };
        let b = h.encode();
        assert_eq!(&b[..4], &[0x34, 0x12, 9, 0]);
        assert_eq!(Header::decode(&b), h);
        assert!(h.no_reply());
        assert_eq!(h.body_len(), Ok(0x10));
        let e = h.error_reply(libc::ENOENT);
        assert_eq!(e.flags, TYPE_REPLY | FLAG_ERROR);
        assert_eq!(e.error, libc::ENOENT as u32);
        assert_eq!(e.size, 16);
        assert_eq!(e.id, 0x1234);
    }

    #[test]
    fn header_size_below_header_is_an_error() {
        let h = Header {
            size: 15,
            ..Default::default()
        };
        assert_eq!(h.body_len(), Err(ProtocolError::SizeBelowHeader(15)));
    }

    #[test]
    fn version_caps_parse() {
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(
            br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":65536,"migration":{"pgsize":4096},"write_multiple":true}}"#,
        );
        body.push(0);
        let v = VersionRequest::decode(&body).unwrap();
        assert_eq!(v.caps.max_msg_fds, 16);
        assert_eq!(v.caps.max_data_xfer_size, 65536);
        // No capability string at all: defaults.
        let v = VersionRequest::decode(&[0, 0, 1, 0]).unwrap();
        assert_eq!(v.minor, 1);
        assert_eq!(v.caps, ClientCaps::default());
    }

    #[test]
    fn version_caps_malformed() {
        for bad in [
            &b"{not json"[..],
            b"[1,2]",
            br#"{"capabilities":3}"#,
            br#"{"capabilities":{"max_msg_fds":-1}}"#,
            br#"{"capabilities":{"max_msg_fds":"x"}}"#,
            b"\xff\xfe",
        ] {
            let mut body = vec![0, 0, 0, 0];
            body.extend_from_slice(bad);
            let err = VersionRequest::decode(&body).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
        }
        assert!(VersionRequest::decode(&[0, 0, 0]).is_err());
    }

    #[test]
    fn version_reply_is_nul_terminated_json_with_our_limits() {
        let mut out = Vec::new();
        encode_version_reply(0, None, &mut out);
        assert_eq!(&out[..4], &[0, 0, 0, 0], "minor follows the client's 0");
        assert_eq!(out.last(), Some(&0));
        let v: serde_json::Value = serde_json::from_slice(&out[4..out.len() - 1]).unwrap();
        assert_eq!(v["capabilities"]["max_msg_fds"], 16);
        assert_eq!(v["capabilities"]["max_data_xfer_size"], 1 << 20);
        assert!(v["capabilities"].get("migration").is_none());
        assert!(v["capabilities"].get("max_dma_maps").is_none());
        let mut out = Vec::new();
        encode_version_reply(7, Some(300), &mut out);
        assert_eq!(&out[2..4], &VERSION_MINOR.to_le_bytes());
        let v: serde_json::Value = serde_json::from_slice(&out[4..out.len() - 1]).unwrap();
        assert_eq!(v["capabilities"]["max_dma_maps"], 300);
    }

    fn region_access(offset: u64, region: u32, count: u32) -> Vec<u8> {
        let mut v = Vec::new();
        RegionAccess {
            offset,
            region,
            count,
        }
        .encode(&mut v);
        v
    }

    #[test]
    fn region_access_bounds() {
        assert!(RegionAccess::decode_read(&region_access(0, 0, 4)).is_ok());
        assert!(RegionAccess::decode_read(&region_access(0, 0, 0)).is_err());
        assert!(RegionAccess::decode_read(&region_access(0, 0, MAX_DATA_XFER_SIZE)).is_ok());
        assert!(RegionAccess::decode_read(&region_access(0, 0, MAX_DATA_XFER_SIZE + 1)).is_err());
        assert!(RegionAccess::decode_read(&region_access(u64::MAX - 1, 0, 4)).is_err());
        assert!(RegionAccess::decode_read(&region_access(0, 0, 4)[..15]).is_err());
        // Write: data length must match count exactly.
        let mut w = region_access(8, 1, 4);
        w.extend_from_slice(&[1, 2, 3]);
        assert!(RegionAccess::decode_write(&w).is_err());
        w.push(4);
        let (a, d) = RegionAccess::decode_write(&w).unwrap();
        assert_eq!((a.offset, a.region, a.count), (8, 1, 4));
        assert_eq!(d, &[1, 2, 3, 4]);
        w.push(5);
        assert!(RegionAccess::decode_write(&w).is_err());
    }

    #[test]
    fn dma_map_validation() {
        let enc = |flags: u32, offset: u64, iova: u64, size: u64| {
            let mut v = Vec::new();
            v.extend_from_slice(&32u32.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&iova.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v
        };
        let m = DmaMapRequest::decode(&enc(3, 0, 0x1000, 0x2000)).unwrap();
        assert!(m.readable() && m.writable());
        assert!(DmaMapRequest::decode(&enc(3, 0, 0x1000, 0)).is_err());
        assert!(DmaMapRequest::decode(&enc(3, 0, u64::MAX, 2)).is_err());
        assert!(DmaMapRequest::decode(&enc(3, u64::MAX, 0, 2)).is_err());
        assert!(DmaMapRequest::decode(&enc(0x100, 0, 0, 2)).is_err());
        assert!(DmaMapRequest::decode(&enc(3, 0, 0, 2)[..31]).is_err());
    }

    #[test]
    fn dma_unmap_validation() {
        let enc = |flags: u32, iova: u64, size: u64| {
            let mut v = Vec::new();
            v.extend_from_slice(&24u32.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&iova.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v
        };
        assert!(DmaUnmapRequest::decode(&enc(0, 0x1000, 0x1000)).is_ok());
        assert!(DmaUnmapRequest::decode(&enc(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))
            .unwrap()
            .all());
        assert!(DmaUnmapRequest::decode(&enc(VFIO_DMA_UNMAP_FLAG_ALL, 0, 1)).is_err());
        assert_eq!(
            DmaUnmapRequest::decode(&enc(1, 0, 1)).unwrap_err().errno(),
            libc::ENOTSUP
        );
        assert!(DmaUnmapRequest::decode(&enc(0, 0, 0)).is_err());
    }

    #[test]
    fn set_irqs_validation() {
        let enc = |flags: u32, start: u32, count: u32, extra: &[u8]| {
            let mut v = Vec::new();
            v.extend_from_slice(&20u32.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            v.extend_from_slice(&2u32.to_le_bytes());
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(extra);
            v
        };
        let trig_fd = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        assert!(SetIrqsRequest::decode(&enc(trig_fd, 3, 1, &[])).is_ok());
        // Two data types, or two actions.
        assert!(SetIrqsRequest::decode(&enc(trig_fd | VFIO_IRQ_SET_DATA_NONE, 0, 1, &[])).is_err());
        assert!(
            SetIrqsRequest::decode(&enc(trig_fd | VFIO_IRQ_SET_ACTION_MASK, 0, 1, &[])).is_err()
        );
        assert!(SetIrqsRequest::decode(&enc(0, 0, 1, &[])).is_err());
        assert!(SetIrqsRequest::decode(&enc(trig_fd, u32::MAX, 1, &[])).is_err());
        assert!(SetIrqsRequest::decode(&enc(trig_fd, 0, MAX_IRQ_COUNT + 1, &[])).is_err());
        let bool_mask = VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK;
        let r = SetIrqsRequest::decode(&enc(bool_mask, 0, 3, &[1, 0, 1])).unwrap();
        assert_eq!(r.bools, vec![true, false, true]);
        assert!(SetIrqsRequest::decode(&enc(bool_mask, 0, 3, &[1, 0])).is_err());
    }

    #[test]
    fn region_info_caps_fit_or_report_needed_size() {
        let info = RegionInfo {
            size: 0x10000,
            readable: true,
            writable: true,
            mmappable: true,
            sparse_mmap: vec![(0, 0x10000)],
            fd: None,
            fd_offset: 0x2000,
        };
        let mut small = Vec::new();
        encode_region_info(2, &info, 32, true, &mut small).unwrap();
        assert_eq!(small.len(), 32);
        let argsz = u32::from_le_bytes(small[0..4].try_into().unwrap());
        assert_eq!(argsz, 32 + 16 + 16);
        let flags = u32::from_le_bytes(small[4..8].try_into().unwrap());
        assert_eq!(flags, 1 | 2 | 4 | 8);
        assert_eq!(u32::from_le_bytes(small[12..16].try_into().unwrap()), 32);
        assert_eq!(
            u64::from_le_bytes(small[24..32].try_into().unwrap()),
            0x2000
        );
        let mut full = Vec::new();
        encode_region_info(2, &info, argsz, true, &mut full).unwrap();
        assert_eq!(full.len(), argsz as usize);
        assert_eq!(&full[32..34], &1u16.to_le_bytes());
        assert_eq!(u32::from_le_bytes(full[40..44].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(full[56..64].try_into().unwrap()),
            0x10000
        );
        // Without an fd: no MMAP, no caps.
        let mut nofd = Vec::new();
        encode_region_info(2, &info, 1000, false, &mut nofd).unwrap();
        assert_eq!(nofd.len(), 32);
        assert_eq!(u32::from_le_bytes(nofd[4..8].try_into().unwrap()), 1 | 2);
    }

    #[test]
    fn decoders_never_panic_on_short_or_garbage_input() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..80usize {
            for _ in 0..20 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect();
                for cmd in 0..=Command::MAX {
                    if let Some(cmd) = Command::from_u16(cmd) {
                        let _ = Request::decode(cmd, &buf);
                    }
                }
            }
        }
    }
}
