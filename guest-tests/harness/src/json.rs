//! `cxl list` output, read with serde_json: the lookups the checks need.

use serde_json::Value;

/// Parse a JSON document.
pub fn parse(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| e.to_string())
}

/// A number, or a string holding one in the shared grammar (cxl-cli prints hex
/// strings with -u), as u64. Negative integers wrap: json-c prints a u64 above
/// i64::MAX as a negative int64.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|v| v as u64)),
        Value::String(s) => crate::config::parse_u64(s).ok(),
        _ => None,
    }
}

/// Every object in the tree (depth first, `j` included) that has `key` equal to the
/// string `value`.
pub fn find_objects<'a>(j: &'a Value, key: &str, value: &str, out: &mut Vec<&'a Value>) {
    walk_objects(j, &mut |o| {
        if o.get(key).and_then(Value::as_str) == Some(value) {
            out.push(o);
        }
    });
}

/// Every object in the tree (depth first, `j` included) that has `key`.
pub fn objects_with<'a>(j: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    walk_objects(j, &mut |o| {
        if o.get(key).is_some() {
            out.push(o);
        }
    });
}

fn walk_objects<'a>(j: &'a Value, f: &mut impl FnMut(&'a Value)) {
    match j {
        Value::Object(m) => {
            f(j);
            m.values().for_each(|v| walk_objects(v, f));
        }
        Value::Array(a) => a.iter().for_each(|v| walk_objects(v, f)),
        _ => {}
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
        find_objects(&j, "memdev", "mem0", &mut v);
        assert_eq!(v.len(), 1);
        assert_eq!(as_u64(&v[0]["serial"]), Some(0x0123_4567_89ab_cdef));
        let mut d = Vec::new();
        find_objects(&j, "decoder", "decoder2.0", &mut d);
        assert_eq!(as_u64(&d[0]["dpa_size"]), Some(0x1000_0000));
        assert_eq!(d[0]["mode"].as_str(), Some("ram"));
        let mut all = Vec::new();
        objects_with(&j, "decoder", &mut all);
        assert_eq!(all.len(), 4, "root, port and two endpoint decoders");
    }

    #[test]
    fn values_and_errors() {
        assert_eq!(as_u64(&parse("-1").unwrap()), Some(u64::MAX));
        assert_eq!(
            as_u64(&parse("18446744073709551615").unwrap()),
            Some(u64::MAX)
        );
        assert_eq!(as_u64(&parse("\"0x10\"").unwrap()), Some(16));
        assert_eq!(as_u64(&parse("\"512M\"").unwrap()), Some(512 << 20));
        assert_eq!(as_u64(&parse("1.5").unwrap()), None);
        assert_eq!(as_u64(&parse("true").unwrap()), None);
        assert_eq!(parse(r#""a\"b\u0041\n""#).unwrap(), "a\"bA\n");
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
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        assert!(parse(&deep).is_err(), "nesting is bounded");
    }
}
