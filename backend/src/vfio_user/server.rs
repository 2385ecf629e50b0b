//! placeholder
/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The client closed the socket.
    Disconnected,
    /// The stop fd fired.
    Stopped,
}
/// The server.
pub struct Server;
