//! Newline-delimited framing, as MCP's stdio transport uses it: one message per line, no
//! newline inside a message. [`LineReader`] cuts a byte stream into lines with a cap on a line's
//! length, so that a child that never ends a line cannot grow the server.

/// A line cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, without its `\n` (nor a `\r` before it).
    Complete(&'a [u8]),
    /// A line longer than the cap, skipped: how many bytes it had.
    Oversized(usize),
}

/// Cuts lines out of a byte stream, holding at most `max` bytes of a partial line.
#[derive(Debug)]
pub struct LineReader {
    partial: Vec<u8>,
    max: usize,
    /// Bytes of an oversized line skipped so far, while its end has not come.
    skipping: Option<usize>,
}

/// A partial-line buffer larger than this is freed once its line is done.
const KEPT_CAPACITY: usize = 16 * 1024;

impl LineReader {
    /// A reader whose lines hold at most `max` bytes.
    pub fn new(max: usize) -> LineReader {
        LineReader {
            partial: Vec::new(),
            max,
            skipping: None,
        }
    }

    /// Takes `data` and calls `each` for every line it ends.
    pub fn push(&mut self, mut data: &[u8], mut each: impl FnMut(Line<'_>)) {
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n');
            let (piece, rest) = match end {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &[][..]),
            };
            data = rest;
            if let Some(skipped) = &mut self.skipping {
                *skipped += piece.len();
                if end.is_some() {
                    let total = *skipped;
                    self.skipping = None;
                    each(Line::Oversized(total));
                }
                continue;
            }
            if self.partial.len() + piece.len() > self.max {
                self.skipping = Some(self.partial.len() + piece.len());
                self.partial = Vec::new();
                if end.is_some() {
                    let total = self.skipping.take().unwrap_or(0);
                    each(Line::Oversized(total));
                }
                continue;
            }
            if end.is_none() {
                self.partial.extend_from_slice(piece);
                continue;
            }
            if self.partial.is_empty() {
                // The whole line is in `data`: no copy.
                each(Line::Complete(trim_cr(piece)));
            } else {
                self.partial.extend_from_slice(piece);
                each(Line::Complete(trim_cr(&self.partial)));
                self.partial.clear();
                if self.partial.capacity() > KEPT_CAPACITY {
                    self.partial = Vec::new();
                }
            }
        }
    }

    /// Bytes held of a line not yet ended.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The stream has ended: the last line, if it had no newline, is given whole (or as
    /// oversized).
    pub fn finish(&mut self, mut each: impl FnMut(Line<'_>)) {
        if let Some(skipped) = self.skipping.take() {
            each(Line::Oversized(skipped));
        } else if !self.partial.is_empty() {
            each(Line::Complete(trim_cr(&self.partial)));
        }
        self.partial = Vec::new();
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(reader: &mut LineReader, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in chunks {
            reader.push(chunk, |line| {
                out.push(match line {
                    Line::Complete(l) => String::from_utf8_lossy(l).into_owned(),
                    Line::Oversized(n) => format!("<{n} skipped>"),
                })
            });
        }
        out
    }

    #[test]
    fn lines_split_across_and_within_chunks() {
        let mut r = LineReader::new(100);
        let got = lines(&mut r, &[b"{\"a\":1}\n{\"b\"", b":2}\r\n\n", b"{\"c\":3}"]);
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", ""]);
        assert_eq!(r.pending(), 7);
        assert_eq!(lines(&mut r, &[b"\n"]), ["{\"c\":3}"]);
        assert_eq!(r.pending(), 0);
        r.push(b"last words", |_| panic!("no line ended"));
        let mut last = Vec::new();
        r.finish(|line| last.push(format!("{line:?}")));
        assert_eq!(last, [format!("{:?}", Line::Complete(b"last words"))]);
        r.finish(|_| panic!("nothing is left"));
    }

    #[test]
    fn an_oversized_line_is_skipped_whole_and_the_next_one_read() {
        let mut r = LineReader::new(8);
        let got = lines(
            &mut r,
            &[b"12345", b"67890", b"abc\nok\n", b"0123456789\nfine\n"],
        );
        assert_eq!(got, ["<13 skipped>", "ok", "<10 skipped>", "fine"]);
        assert_eq!(r.pending(), 0);
        // A line of exactly the cap passes.
        assert_eq!(lines(&mut r, &[b"12345678\n"]), ["12345678"]);
    }

    #[test]
    fn a_partial_line_never_holds_more_than_the_cap() {
        let mut r = LineReader::new(1000);
        for _ in 0..100 {
            r.push(&[b'x'; 999], |_| panic!("no line ended"));
            assert!(r.pending() <= 1000);
        }
        assert_eq!(lines(&mut r, &[b"\n"]), ["<99900 skipped>"]);
    }
}
