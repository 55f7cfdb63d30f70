//! The ADB transport wire format (AOSP `system/core/adb/protocol.txt`, platform-tools 29.0.6):
//! a 24-byte little-endian header followed by the payload.

use std::io::{self, Read, Write};

/// `CNXN`: connection handshake.
pub const A_CNXN: u32 = 0x4e58_4e43;
/// `AUTH`: RSA token/signature/public-key exchange.
pub const A_AUTH: u32 = 0x4854_5541;
/// `OPEN`: the host opens a stream to a service.
pub const A_OPEN: u32 = 0x4e45_504f;
/// `OKAY`: stream opened, or ready for the next write.
pub const A_OKAY: u32 = 0x5941_4b4f;
/// `CLSE`: stream closed.
pub const A_CLSE: u32 = 0x4553_4c43;
/// `WRTE`: stream data.
pub const A_WRTE: u32 = 0x4554_5257;

/// The first protocol version, whose peers check the payload byte-sum.
pub const A_VERSION_MIN: u32 = 0x0100_0000;
/// From this version on the sender puts 0 in `data_check` and the receiver does not check it.
pub const A_VERSION_SKIP_CHECKSUM: u32 = 0x0100_0001;
/// adbd's own version at 29.0.6.
pub const A_VERSION: u32 = A_VERSION_SKIP_CHECKSUM;
/// adbd's largest payload (`MAX_PAYLOAD`, 1 MiB).
pub const MAX_PAYLOAD: u32 = 1024 * 1024;

/// AUTH arg0: a token the host must sign.
pub const AUTH_TOKEN: u32 = 1;
/// AUTH arg0: the host's signature of the token.
pub const AUTH_SIGNATURE: u32 = 2;
/// AUTH arg0: the host's public key (the user would be asked to accept it).
pub const AUTH_RSAPUBLICKEY: u32 = 3;

/// One transport message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Command (`A_*`).
    pub command: u32,
    /// First argument (local id, version, auth type...).
    pub arg0: u32,
    /// Second argument (remote id, max payload...).
    pub arg1: u32,
    /// Payload.
    pub data: Vec<u8>,
}

/// Why a message could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed or closed.
    Io(io::Error),
    /// The header was malformed (bad magic, oversized payload, bad checksum): adbd drops the
    /// connection on these.
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// The byte-sum of `data`, as `data_check` carries it before version 0x01000001.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter()
        .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
}

impl Message {
    /// A message with a payload.
    pub fn new(command: u32, arg0: u32, arg1: u32, data: Vec<u8>) -> Message {
        Message {
            command,
            arg0,
            arg1,
            data,
        }
    }

    /// The 24-byte header plus payload; `with_checksum` fills `data_check` (needed by peers
    /// speaking version 0x01000000, such as adb_client).
    pub fn encode(&self, with_checksum: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.data.len());
        let check = if with_checksum {
            checksum(&self.data)
        } else {
            0
        };
        for word in [
            self.command,
            self.arg0,
            self.arg1,
            self.data.len() as u32,
            check,
            self.command ^ 0xffff_ffff,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes the message in one `write_all` (so concurrent writers under a lock never interleave).
    pub fn write_to(&self, w: &mut impl Write, with_checksum: bool) -> io::Result<()> {
        w.write_all(&self.encode(with_checksum))
    }

    /// Reads one message. `max_payload` bounds `data_length`; `check_sum` verifies `data_check`
    /// (adbd does so while the negotiated version is below 0x01000001).
    pub fn read_from(
        r: &mut impl Read,
        max_payload: u32,
        check_sum: bool,
    ) -> Result<(Message, usize), ReadError> {
        let mut header = [0u8; 24];
        r.read_exact(&mut header)?;
        let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
        let (command, arg0, arg1, len, check, magic) =
            (word(0), word(1), word(2), word(3), word(4), word(5));
        if magic != command ^ 0xffff_ffff {
            return Err(ReadError::Protocol(format!(
                "bad magic {magic:#x} for command {command:#x}"
            )));
        }
        if len > max_payload {
            return Err(ReadError::Protocol(format!(
                "payload of {len} bytes exceeds the maximum {max_payload}"
            )));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        if check_sum && checksum(&data) != check {
            return Err(ReadError::Protocol(format!(
                "bad data_check {check:#x} (sum is {:#x})",
                checksum(&data)
            )));
        }
        Ok((Message::new(command, arg0, arg1, data), 24 + len as usize))
    }
}

/// A printable name for a command (for logs).
pub fn command_name(command: u32) -> String {
    String::from_utf8_lossy(&command.to_le_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_with_checksum() {
        let m = Message::new(A_WRTE, 7, 9, b"hello".to_vec());
        let bytes = m.encode(true);
        assert_eq!(&bytes[0..4], b"WRTE");
        assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), 532);
        let (back, n) = Message::read_from(&mut &bytes[..], MAX_PAYLOAD, true).unwrap();
        assert_eq!((back, n), (m, 29));
    }

    #[test]
    fn bad_checksum_and_magic_are_rejected() {
        let mut bytes = Message::new(A_WRTE, 1, 2, b"x".to_vec()).encode(true);
        bytes[16] ^= 1;
        assert!(Message::read_from(&mut &bytes[..], MAX_PAYLOAD, true).is_err());
        assert!(Message::read_from(&mut &bytes[..], MAX_PAYLOAD, false).is_ok());
        bytes[20] ^= 1;
        assert!(Message::read_from(&mut &bytes[..], MAX_PAYLOAD, false).is_err());
    }
}
