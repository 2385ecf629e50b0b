//! A small JSON parser, enough for `cxl list` output (RFC 8259 without surrogate
//! pair validation). Numbers keep their text so 64-bit values survive.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A number, or a string holding a decimal / 0x-hex number (cxl-cli prints hex
    /// strings with -u), as u64. Negative decimals wrap (json-c prints u64 > i64::MAX
    /// as negative int64).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n
                .parse::<u64>()
                .ok()
                .or_else(|| n.parse::<i64>().ok().map(|v| v as u64)),
            Json::Str(s) => crate::config::parse_u64(s).ok(),
            _ => None,
        }
    }
    /// Every object in the tree (depth first, self included) that has `key` equal to
    /// the string `value`.
    pub fn find_objects<'a>(&'a self, key: &str, value: &str, out: &mut Vec<&'a Json>) {
        match self {
            Json::Obj(m) => {
                if m.get(key).and_then(Json::as_str) == Some(value) {
                    out.push(self);
                }
                for v in m.values() {
                    v.find_objects(key, value, out);
                }
            }
            Json::Arr(a) => {
                for v in a {
                    v.find_objects(key, value, out);
                }
            }
            _ => {}
        }
    }
}

pub fn parse(s: &str) -> Result<Json, String> {
    let mut p = Parser {
        b: s.as_bytes(),
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.b.len() {
        return Err(format!("trailing data at byte {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected {:?}", c as char))
        }
    }
    fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        match self.b.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'n') => self.lit("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("unexpected character"),
        }
    }
    fn nested(&mut self, f: fn(&mut Self) -> Result<Json, String>) -> Result<Json, String> {
        self.depth += 1;
        if self.depth > 64 {
            return self.err("nesting too deep");
        }
        let v = f(self);
        self.depth -= 1;
        v
    }
    fn object(&mut self) -> Result<Json, String> {
        self.eat(b'{')?;
        let mut m = BTreeMap::new();
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Json::Obj(m));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let v = self.value()?;
            m.insert(k, v);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                _ => return self.err("expected , or }"),
            }
        }
    }
    fn array(&mut self) -> Result<Json, String> {
        self.eat(b'[')?;
        let mut a = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Arr(a));
        }
        loop {
            self.ws();
            a.push(self.value()?);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                _ => return self.err("expected , or ]"),
            }
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let h = self
                                .b
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(h) = h else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            out.push(char::from_u32(h).unwrap_or('\u{fffd}'));
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                c if c < 0x20 => return self.err("control character in string"),
                _ => {
                    // copy one UTF-8 sequence
                    let start = self.i - 1;
                    let mut end = self.i;
                    while end < self.b.len() && (self.b[end] & 0xc0) == 0x80 {
                        end += 1;
                    }
                    out.push_str(&String::from_utf8_lossy(&self.b[start..end]));
                    self.i = end;
                }
            }
        }
    }
    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        while self.i < self.b.len()
            && matches!(
                self.b[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let s = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
        if s.parse::<f64>().is_err() {
            return self.err("bad number");
        }
        Ok(Json::Num(s.to_string()))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Shape of `cxl list -M -D -R` on the prototype (numbers without -u).
    pub const CXL_LIST: &str = r#"{
  "memdevs":[
    {
      "memdev":"mem0",
      "ram_size":536870912,
      "serial":81985529216486895,
      "host":"0000:0d:00.0"
    }
  ],
  "regions":[
    {
      "region":"region0",
      "resource":12079595520,
      "size":268435456,
      "type":"ram",
      "interleave_ways":1,
      "interleave_granularity":256,
      "decode_state":"commit"
    }
  ],
  "root decoders":[
    {
      "decoder":"decoder0.0",
      "resource":12079595520,
      "size":4294967296,
      "interleave_ways":1,
      "max_available_extent":4026531840,
      "volatile_capable":true,
      "accelmem_capable":true,
      "nr_targets":1
    }
  ],
  "port decoders":[
    {"decoder":"decoder1.0","resource":12079595520,"size":268435456,"interleave_ways":1,"region":"region0","nr_targets":1}
  ],
  "endpoint decoders":[
    {"decoder":"decoder2.0","resource":12079595520,"size":268435456,"interleave_ways":1,"region":"region0","dpa_resource":0,"dpa_size":268435456,"mode":"ram"},
    {"decoder":"decoder2.1","interleave_ways":1,"state":"disabled"}
  ]
}"#;

    #[test]
    fn parses_cxl_list() {
        let j = parse(CXL_LIST).unwrap();
        let mut v = Vec::new();
        j.find_objects("memdev", "mem0", &mut v);
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].get("serial").unwrap().as_u64(),
            Some(0x0123_4567_89ab_cdef)
        );
        let mut d = Vec::new();
        j.find_objects("decoder", "decoder2.0", &mut d);
        assert_eq!(d[0].get("dpa_size").unwrap().as_u64(), Some(0x1000_0000));
        assert_eq!(d[0].get("mode").unwrap().as_str(), Some("ram"));
    }

    #[test]
    fn values_and_errors() {
        assert_eq!(parse("-1").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(parse("\"0x10\"").unwrap().as_u64(), Some(16));
        assert_eq!(
            parse(r#""a\"b\u0041\n""#).unwrap(),
            Json::Str("a\"bA\n".into())
        );
        assert_eq!(
            parse("[true,false,null,{}]").unwrap(),
            Json::Arr(vec![
                Json::Bool(true),
                Json::Bool(false),
                Json::Null,
                Json::Obj(BTreeMap::new())
            ])
        );
        assert_eq!(parse("\"é\"").unwrap(), Json::Str("é".into()));
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "tru",
            "\"abc",
            "1 2",
            "{1:2}",
            "-",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).unwrap_err().contains("deep"));
    }
}
