//! The Confluent wire format: a zero magic byte, the schema id as a 4-byte big-endian integer,
//! then the Avro body. Parsing checks every length: a short or foreign message is an error the
//! caller can route to the DLQ, never a panic.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("message starts with byte {0:#04x}, not the Confluent magic byte 0x00")]
    BadMagic(u8),
}

pub const MAGIC: u8 = 0;
pub const HEADER_LEN: usize = 5;

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed message into its schema id and Avro body.
pub fn parse(message: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if message.len() < HEADER_LEN {
        return Err(WireError::TooShort(message.len()));
    }
    if message[0] != MAGIC {
        return Err(WireError::BadMagic(message[0]));
    }
    let id = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
    Ok((id, &message[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_parses() {
        let m = frame(258, b"body");
        assert_eq!(m[..5], [0, 0, 0, 1, 2]);
        assert_eq!(parse(&m), Ok((258, &b"body"[..])));
    }

    #[test]
    fn refuses_short_and_foreign_messages() {
        assert_eq!(parse(b""), Err(WireError::TooShort(0)));
        assert_eq!(parse(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(parse(b"{\"json\":1}"), Err(WireError::BadMagic(b'{')));
        // an empty body is a valid frame (the Avro decoder decides whether it is enough)
        assert_eq!(parse(&[0, 0, 0, 0, 9]), Ok((9, &b""[..])));
    }
}
