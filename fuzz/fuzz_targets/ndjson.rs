//! `ndjson::LineReader` over arbitrary bytes in arbitrary chunks, against a reference: split the
//! whole stream on `\n`; a line longer than the cap (counting a final `\r`) is reported as
//! oversized with its length, any other without its final `\r`; the last piece, if not empty,
//! comes at `finish`. The partial line held never passes the cap.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_stream::proto::ndjson::{Line, LineReader};

#[derive(Arbitrary, Debug)]
struct Input {
    max: u8,
    splits: Vec<u8>,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Complete(Vec<u8>),
    Oversized(usize),
}

fn own(line: Line<'_>) -> Got {
    match line {
        Line::Complete(l) => Got::Complete(l.to_vec()),
        Line::Oversized(n) => Got::Oversized(n),
    }
}

fn reference(data: &[u8], max: usize) -> Vec<Got> {
    let judge = |line: &[u8]| {
        if line.len() > max {
            Got::Oversized(line.len())
        } else {
            Got::Complete(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        }
    };
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = pieces.pop().unwrap_or(&[]);
    let mut out: Vec<Got> = pieces.into_iter().map(judge).collect();
    if !last.is_empty() {
        out.push(judge(last));
    }
    out
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max);
    let mut reader = LineReader::new(max);
    let mut got = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < input.data.len() {
        let step = match &input.splits[..] {
            [] => input.data.len(),
            s => usize::from(s[turn % s.len()]).max(1),
        };
        turn += 1;
        let end = (at + step).min(input.data.len());
        reader.push(&input.data[at..end], |l| got.push(own(l)));
        assert!(
            reader.pending() <= max,
            "{} bytes held, cap {max}",
            reader.pending()
        );
        at = end;
    }
    reader.finish(|l| got.push(own(l)));
    assert_eq!(reader.pending(), 0);
    assert_eq!(got, reference(&input.data, max));
});
