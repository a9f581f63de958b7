//! `BodyDecoder` over arbitrary bytes fed in arbitrary splits, `Content-Length` and chunked:
//! the pieces decode exactly as the whole does (same body, same end, same error status, same
//! bytes left over), and the caps hold. A second mode encodes an arbitrary body in arbitrary
//! chunk sizes, with size-line extensions under or over the 1024-byte cap: it decodes back to
//! the body whatever the reads, or, over the cap, is refused alike however it is read.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_stream::proto::http::{BodyDecoder, BodyKind, HttpError};

#[derive(Arbitrary, Debug)]
struct Input {
    chunked: bool,
    length: u16,
    max_body: u16,
    max_framing: u16,
    /// Read sizes, used in turn.
    splits: Vec<u8>,
    /// Encode `data` as chunks of these sizes, each size line with an extension of this
    /// many bytes, instead of decoding it raw.
    encode: Option<(Vec<u8>, u16)>,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done { body: Vec<u8>, left: Vec<u8> },
    Incomplete { body: Vec<u8> },
    Failed(u16),
}

fn decode(
    kind: BodyKind,
    input: &[u8],
    splits: &[u8],
    max_body: usize,
    max_framing: usize,
) -> Outcome {
    let Some(mut decoder) = BodyDecoder::new(kind) else {
        return Outcome::Done {
            body: Vec::new(),
            left: input.to_vec(),
        };
    };
    let mut body = Vec::new();
    let mut buffered = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < input.len() {
        let step = match splits {
            [] => input.len(),
            _ => usize::from(splits[turn % splits.len()]).max(1),
        };
        turn += 1;
        let end = (at + step).min(input.len());
        buffered.extend_from_slice(&input[at..end]);
        at = end;
        match decoder.decode(&buffered, &mut body, max_body, max_framing) {
            Err(HttpError { status, .. }) => return Outcome::Failed(status),
            Ok(d) => {
                assert!(d.consumed <= buffered.len());
                assert!(body.len() <= max_body, "the body passed its cap");
                buffered.drain(..d.consumed);
                if d.done {
                    buffered.extend_from_slice(&input[at..]);
                    return Outcome::Done {
                        body,
                        left: buffered,
                    };
                }
            }
        }
    }
    Outcome::Incomplete { body }
}

fn chunks_of(body: &[u8], sizes: &[u8], extension: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < body.len() {
        let size = usize::from(sizes.get(turn % sizes.len().max(1)).copied().unwrap_or(7)).max(1);
        // The first size line carries the extension (every line would make huge inputs).
        let ext = if turn == 0 { extension } else { "" };
        turn += 1;
        let end = (at + size).min(body.len());
        out.extend_from_slice(format!("{:X}{ext}\r\n", end - at).as_bytes());
        out.extend_from_slice(&body[at..end]);
        out.extend_from_slice(b"\r\n");
        at = end;
    }
    let ext = if turn == 0 { extension } else { "" };
    out.extend_from_slice(format!("0{ext}\r\nX-Trailer: 1\r\n\r\nNEXT").as_bytes());
    out
}

fuzz_target!(|input: Input| {
    let max_body = usize::from(input.max_body);
    let max_framing = usize::from(input.max_framing);
    if let Some((sizes, extension)) = &input.encode {
        // The extension makes the first size line up to 4 + 1 + 2000 bytes long: over the
        // 1024-byte cap or under it.
        let extension = format!(";{}", "e".repeat(usize::from(*extension) % 2000));
        let wire = chunks_of(&input.data, sizes, &extension);
        let whole = decode(BodyKind::Chunked, &wire, &[], usize::MAX, 1024);
        let pieces = decode(BodyKind::Chunked, &wire, &input.splits, usize::MAX, 1024);
        match (&whole, &pieces) {
            (Outcome::Failed(a), Outcome::Failed(b)) => assert_eq!(a, b),
            _ => assert_eq!(whole, pieces),
        }
        if extension.len() + 8 < 1024 {
            assert_eq!(
                pieces,
                Outcome::Done {
                    body: input.data.clone(),
                    left: b"NEXT".to_vec()
                }
            );
        }
        return;
    }
    let kind = if input.chunked {
        BodyKind::Chunked
    } else {
        BodyKind::Length(u64::from(input.length))
    };
    let whole = decode(kind, &input.data, &[], max_body, max_framing);
    let pieces = decode(kind, &input.data, &input.splits, max_body, max_framing);
    match (&whole, &pieces) {
        // Before an error, how much of the body was taken may differ.
        (Outcome::Failed(a), Outcome::Failed(b)) => assert_eq!(a, b),
        _ => assert_eq!(whole, pieces),
    }
    if let (BodyKind::Length(n), Outcome::Done { body, .. }) = (kind, &whole) {
        assert_eq!(body.len() as u64, n);
    }
});
