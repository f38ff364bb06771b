//! QMP's input: a stream of JSON values, split and parsed as QEMU's monitor does.
//!
//! `JsonStream` takes bytes as they arrive (a value may span reads; several may share one) and
//! yields each complete top-level value, or an error for each bad one, after which the stream
//! carries on with the next input. Like QEMU it also accepts single-quoted strings. Input that
//! would exhaust memory is refused: a value larger than `max_bytes` or nested deeper than
//! `max_depth` yields one error and is skipped without being stored.

use serde_json::{Map, Number, Value};

/// Limits of one top-level value.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
        }
    }
}

/// Why a value was refused. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("JSON parse error, {0}")]
    Parse(String),
    #[error("JSON input is larger than {0} bytes; value discarded")]
    TooLarge(usize),
    #[error("JSON nesting depth limit exceeded ({0} levels); value discarded")]
    TooDeep(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between values.
    Idle,
    /// Inside an object or array (depth > 0), outside any string.
    Nested,
    /// Inside a string (in a value or at top level), with its quote byte.
    Str { quote: u8, escaped: bool },
    /// A bare top-level token (number, keyword, garbage) until a delimiter.
    Bare,
}

/// Incremental splitter and parser.
pub struct JsonStream {
    limits: Limits,
    buf: Vec<u8>,
    depth: usize,
    mode: Mode,
    /// The current value broke a limit: keep scanning to find its end but store nothing.
    discarding: bool,
}

impl JsonStream {
    pub fn new(limits: Limits) -> JsonStream {
        JsonStream {
            limits,
            buf: Vec::new(),
            depth: 0,
            mode: Mode::Idle,
            discarding: false,
        }
    }

    /// Bytes held for the value in progress.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `input`; calls `out` with each complete value or error, in order.
    pub fn feed(&mut self, input: &[u8], mut out: impl FnMut(Result<Value, JsonError>)) {
        for &b in input {
            self.step(b, &mut out);
        }
    }

    fn keep(&mut self, b: u8, out: &mut impl FnMut(Result<Value, JsonError>)) {
        if self.discarding {
            return;
        }
        if self.buf.len() >= self.limits.max_bytes {
            self.discarding = true;
            self.buf = Vec::new();
            out(Err(JsonError::TooLarge(self.limits.max_bytes)));
            return;
        }
        self.buf.push(b);
    }

    fn finish(&mut self, out: &mut impl FnMut(Result<Value, JsonError>)) {
        self.mode = Mode::Idle;
        self.depth = 0;
        if std::mem::take(&mut self.discarding) {
            self.buf.clear();
            return;
        }
        let bytes = std::mem::take(&mut self.buf);
        out(parse(&bytes, self.limits.max_depth));
    }

    fn step(&mut self, b: u8, out: &mut impl FnMut(Result<Value, JsonError>)) {
        match self.mode {
            Mode::Idle => match b {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'{' | b'[' => {
                    self.depth = 1;
                    self.mode = Mode::Nested;
                    self.keep(b, out);
                }
                b'"' | b'\'' => {
                    self.mode = Mode::Str {
                        quote: b,
                        escaped: false,
                    };
                    self.keep(b, out);
                }
                b'}' | b']' | b',' | b':' => {
                    out(Err(JsonError::Parse(format!("unexpected '{}'", b as char))));
                }
                _ => {
                    self.mode = Mode::Bare;
                    self.keep(b, out);
                }
            },
            Mode::Bare => match b {
                b' ' | b'\t' | b'\r' | b'\n' => self.finish(out),
                b'{' | b'[' | b'}' | b']' | b',' | b':' | b'"' | b'\'' => {
                    self.finish(out);
                    self.step(b, out);
                }
                _ => self.keep(b, out),
            },
            Mode::Str { quote, escaped } => {
                self.keep(b, out);
                self.mode = if escaped {
                    Mode::Str {
                        quote,
                        escaped: false,
                    }
                } else if b == b'\\' {
                    Mode::Str {
                        quote,
                        escaped: true,
                    }
                } else if b == quote {
                    if self.depth == 0 {
                        self.finish(out);
                        return;
                    }
                    Mode::Nested
                } else {
                    Mode::Str {
                        quote,
                        escaped: false,
                    }
                };
            }
            Mode::Nested => {
                self.keep(b, out);
                match b {
                    b'{' | b'[' => {
                        self.depth += 1;
                        if self.depth > self.limits.max_depth && !self.discarding {
                            self.discarding = true;
                            self.buf = Vec::new();
                            out(Err(JsonError::TooDeep(self.limits.max_depth)));
                        }
                    }
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.finish(out);
                        }
                    }
                    b'"' | b'\'' => {
                        self.mode = Mode::Str {
                            quote: b,
                            escaped: false,
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Parses one complete JSON text (QEMU's dialect: single-quoted strings allowed).
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let mut p = Parser {
        s: bytes,
        i: 0,
        max_depth,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err_here("expecting end of input"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err_here(&self, what: &str) -> JsonError {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() => {
                JsonError::Parse(format!("{what}, found '{}'", c as char))
            }
            Some(_) => JsonError::Parse(format!("{what}, found a control or non-ASCII byte")),
            None => JsonError::Parse(format!("{what}, found end of input")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > self.max_depth {
            return Err(JsonError::TooDeep(self.max_depth));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(q @ (b'"' | b'\'')) => Ok(Value::String(self.string(q)?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.keyword(),
            _ => Err(self.err_here("expecting value")),
        }
    }

    fn keyword(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
            self.i += 1;
        }
        let word = &self.s[start..self.i];
        match word {
            b"true" => Ok(Value::Bool(true)),
            b"false" => Ok(Value::Bool(false)),
            b"null" => Ok(Value::Null),
            w => {
                let shown: String = String::from_utf8_lossy(&w[..w.len().min(32)]).into();
                Err(JsonError::Parse(format!("invalid keyword '{shown}'")))
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
        let bad = || JsonError::Parse(format!("invalid number '{text}'"));
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty()
            || !digits.as_bytes()[0].is_ascii_digit()
            || (digits.len() > 1
                && digits.starts_with('0')
                && digits.as_bytes()[1].is_ascii_digit())
        {
            return Err(bad());
        }
        if !text.contains(['.', 'e', 'E']) {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Number(i.into()));
            }
            if let Ok(u) = text.parse::<u64>() {
                return Ok(Value::Number(u.into()));
            }
        }
        let f: f64 = text.parse().map_err(|_| bad())?;
        Number::from_f64(f).map(Value::Number).ok_or_else(bad)
    }

    fn string(&mut self, quote: u8) -> Result<String, JsonError> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(JsonError::Parse("unterminated string".into()));
            };
            self.i += 1;
            match c {
                c if c == quote => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(JsonError::Parse("unterminated string".into()));
                    };
                    self.i += 1;
                    match e {
                        b'"' | b'\'' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let ch = self.unicode_escape()?;
                            let mut tmp = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                        other => {
                            return Err(JsonError::Parse(format!(
                                "invalid escape '\\{}' in string",
                                other as char
                            )))
                        }
                    }
                }
                c if c < 0x20 => {
                    return Err(JsonError::Parse("control character in string".into()));
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| JsonError::Parse("invalid UTF-8 in string".into()))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| JsonError::Parse("invalid \\u escape".into()))?;
        self.i += 4;
        Ok(h)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(JsonError::Parse("unpaired surrogate in \\u escape".into()));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(JsonError::Parse("unpaired surrogate in \\u escape".into()));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        match char::from_u32(code) {
            Some('\0') | None => Err(JsonError::Parse("invalid \\u escape".into())),
            Some(c) => Ok(c),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.i += 1;
        let mut map = Map::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.ws();
            let key = match self.peek() {
                Some(q @ (b'"' | b'\'')) => self.string(q)?,
                _ => return Err(self.err_here("expecting a string as object key")),
            };
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err_here("expecting ':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth + 1)?;
            if map.contains_key(&key) {
                return Err(JsonError::Parse(format!("duplicate key '{key}'")));
            }
            map.insert(key, v);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.err_here("expecting ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.i += 1;
        let mut v = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Array(v));
        }
        loop {
            self.ws();
            v.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(v));
                }
                _ => return Err(self.err_here("expecting ',' or ']'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn all(input: &[u8]) -> Vec<Result<Value, JsonError>> {
        let mut s = JsonStream::new(Limits::default());
        let mut out = Vec::new();
        s.feed(input, |r| out.push(r));
        out
    }

    #[test]
    fn splits_concatenated_and_partial_values() {
        let r = all(b"{\"a\":1}{\"b\":[1,2]}\r\n  {\"c\":\"}\"}");
        assert_eq!(
            r,
            vec![
                Ok(json!({"a":1})),
                Ok(json!({"b":[1,2]})),
                Ok(json!({"c":"}"}))
            ]
        );
        let mut s = JsonStream::new(Limits::default());
        let mut out = Vec::new();
        for b in br#"{"execute": "query-version", "id": [1, {"a": 2}]}"# {
            s.feed(&[*b], |r| out.push(r));
        }
        assert_eq!(
            out,
            vec![Ok(json!({"execute": "query-version", "id": [1, {"a": 2}]}))]
        );
    }

    #[test]
    fn accepts_single_quotes_and_escapes() {
        assert_eq!(
            all(b"{'execute': 'it\\'s'}"),
            vec![Ok(json!({"execute": "it's"}))]
        );
        assert_eq!(
            all(br#"{"a":"\u00e9\ud83d\ude00\n"}"#),
            vec![Ok(json!({"a":"é😀\n"}))]
        );
    }

    #[test]
    fn numbers_keep_their_kind() {
        let r = all(b"[1, -2, 3.5, 18446744073709551615, 1e3]");
        assert_eq!(
            r,
            vec![Ok(json!([1, -2, 3.5, 18446744073709551615u64, 1000.0]))]
        );
    }

    #[test]
    fn errors_then_recovers() {
        let r = all(b"garbage {\"ok\":true} } {\"a\":} [1,2,3]");
        assert!(
            matches!(&r[0], Err(JsonError::Parse(m)) if m.contains("invalid keyword 'garbage'"))
        );
        assert_eq!(r[1], Ok(json!({"ok": true})));
        assert!(matches!(&r[2], Err(JsonError::Parse(m)) if m.contains("unexpected '}'")));
        assert!(matches!(&r[3], Err(JsonError::Parse(m)) if m.contains("expecting value")));
        assert_eq!(r[4], Ok(json!([1, 2, 3])));
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn oversized_value_is_refused_without_storing_it() {
        let mut s = JsonStream::new(Limits {
            max_bytes: 1024,
            max_depth: 64,
        });
        let mut out = Vec::new();
        s.feed(b"{\"a\":\"", |r| out.push(r));
        for _ in 0..10_000 {
            s.feed(&[b'x'; 100], |r| out.push(r));
            assert!(s.pending() <= 1024);
        }
        s.feed(b"\"}{\"b\":1}", |r| out.push(r));
        assert_eq!(
            out,
            vec![Err(JsonError::TooLarge(1024)), Ok(json!({"b": 1}))]
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut input = vec![b'['; 100_000];
        input.extend(vec![b']'; 100_000]);
        input.extend_from_slice(b"{\"after\":1}");
        let r = all(&input);
        assert_eq!(
            r,
            vec![Err(JsonError::TooDeep(64)), Ok(json!({"after": 1}))]
        );
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        assert!(
            matches!(&all(b"{\"a\":1,\"a\":2}")[0], Err(JsonError::Parse(m)) if m.contains("duplicate key"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut s = JsonStream::new(Limits { max_bytes: 256, max_depth: 8 });
            for c in &chunks {
                s.feed(c, |_| {});
                prop_assert!(s.pending() <= 256);
            }
        }

        #[test]
        fn serde_output_round_trips(v in arb_json()) {
            // A bare top-level scalar ends at a delimiter, as in any stream.
            let mut text = serde_json::to_vec(&v).unwrap();
            text.push(b'\n');
            let got = all(&text);
            prop_assert_eq!(got, vec![Ok(v)]);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            "[a-zA-Z0-9 '\"\\\\/é]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
