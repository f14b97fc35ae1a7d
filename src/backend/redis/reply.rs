//! Reading the scripts' answers and the lease values they return.

use std::time::Duration;

use ::redis::Value;

use super::Attempt;
use crate::backend::{BackendError, Result};
use crate::clock::BootTime;
use crate::lease::{FencingToken, HolderInfo, Lease, LockName};

/// Reads the acquire script's answer: `{1, token, place}`, `{0, value, pttl}` or `{-1}`.
pub fn parse_acquire_reply(
    reply: Value,
    name: &LockName,
    mut holder: HolderInfo,
    secret: String,
    sent_at: BootTime,
) -> Result<Attempt> {
    let unexpected = || {
        BackendError::Unavailable(format!(
            "unexpected answer from the acquire script for lock {name}"
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected());
    };
    match items.as_slice() {
        [Value::Int(1), Value::Int(token), Value::Int(slot)] => {
            let token = u64::try_from(*token).map_err(|_| unexpected())?;
            let slot = u32::try_from(*slot).map_err(|_| unexpected())?;
            holder.token = FencingToken(token);
            Ok(Attempt::Acquired(Lease {
                name: name.clone(),
                holder,
                sent_at,
                secret,
                kernel_lock: None,
                slot,
            }))
        }
        [Value::Int(-1)] => Ok(Attempt::Void),
        [Value::Int(0), Value::BulkString(value), Value::Int(pttl)] => Ok(Attempt::Held {
            holder: Some(parse_holder(value).unwrap_or_else(|| unknown_holder(name))),
            pttl: pttl_duration(*pttl),
        }),
        _ => Err(unexpected()),
    }
}

/// One held place, as the inspect script read it.
#[derive(Debug, PartialEq)]
pub struct HeldPlace {
    /// The lease value, `<secret>\n<holder JSON>`.
    pub value: Vec<u8>,
    pub pttl: i64,
}

/// Reads the inspect script's answer: `{last run or nil, K, value, pttl, ...}`, one triple per
/// held place in order. Returns the last run and the held places.
pub fn parse_inspect_reply(
    reply: Value,
    name: &LockName,
) -> Result<(Option<Vec<u8>>, Vec<HeldPlace>)> {
    let unexpected = || {
        BackendError::Unavailable(format!(
            "unexpected answer from the inspect script for lock {name}"
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected());
    };
    let (last, places) = items.split_first().ok_or_else(unexpected)?;
    let last = match last {
        Value::Nil => None,
        Value::BulkString(last) => Some(last.clone()),
        _ => return Err(unexpected()),
    };
    if places.len() % 3 != 0 {
        return Err(unexpected());
    }
    let held = places
        .chunks_exact(3)
        .map(|place| match place {
            [Value::Int(_), Value::BulkString(value), Value::Int(pttl)] => Ok(HeldPlace {
                value: value.clone(),
                pttl: *pttl,
            }),
            _ => Err(unexpected()),
        })
        .collect::<Result<_>>()?;
    Ok((last, held))
}

/// The holder metadata of a lease value `<secret>\n<holder JSON>`; `None` if it is not one.
pub fn parse_holder(value: &[u8]) -> Option<HolderInfo> {
    let newline = value.iter().position(|&b| b == b'\n')?;
    serde_json::from_slice(&value[newline + 1..]).ok()
}

/// A lease key whose value elect cannot read (written by something else): held, by nobody we
/// can name.
pub fn unknown_holder(name: &LockName) -> HolderInfo {
    HolderInfo {
        host: "unknown".into(),
        version: format!("unreadable lease value for lock {name}"),
        ..HolderInfo::unknown("unknown".into(), FencingToken(0))
    }
}

/// The holder's JSON object without its `token` field, which the acquire script fills in.
pub fn holder_without_token(holder: &HolderInfo) -> Result<String> {
    let mut value = serde_json::to_value(holder)
        .map_err(|e| BackendError::Config(format!("holder metadata: {e}")))?;
    match value.as_object_mut() {
        Some(object) => {
            object.remove("token");
            if object.is_empty() {
                return Err(BackendError::Config("empty holder metadata".into()));
            }
        }
        None => {
            return Err(BackendError::Config(
                "holder metadata is not an object".into(),
            ))
        }
    }
    Ok(value.to_string())
}

/// PTTL answers -2 (no key) and -1 (no expiry) besides a time.
pub fn pttl_duration(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_json_drops_only_the_token() {
        let holder = HolderInfo::this_process(Some("web-1:7".into()), Duration::from_secs(5));
        let json = holder_without_token(&holder).unwrap();
        assert!(json.starts_with('{'));
        assert!(!json.contains("\"token\""));
        // What the acquire script stores, read back.
        let value = format!("abc\n{{\"token\":17,{}", &json[1..]);
        let back = parse_holder(value.as_bytes()).unwrap();
        assert_eq!(back.token, FencingToken(17));
        assert_eq!(back.id, "web-1:7");
    }

    #[test]
    fn unreadable_values() {
        assert!(parse_holder(b"no newline").is_none());
        assert!(parse_holder(b"s\nnot json").is_none());
    }

    #[test]
    fn inspect_answers() {
        let name = LockName::new("pair").unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Nil,
            Value::Int(0),
            bulk("s\n{}"),
            Value::Int(900),
            Value::Int(2),
            bulk("t\n{}"),
            Value::Int(-1),
        ]);
        let (last, held) = parse_inspect_reply(reply, &name).unwrap();
        assert_eq!(last, None);
        assert_eq!(
            held,
            [
                HeldPlace {
                    value: b"s\n{}".to_vec(),
                    pttl: 900
                },
                HeldPlace {
                    value: b"t\n{}".to_vec(),
                    pttl: -1
                },
            ]
        );
        let free = Value::Array(vec![bulk("{}")]);
        let (last, held) = parse_inspect_reply(free, &name).unwrap();
        assert_eq!(last.as_deref(), Some(&b"{}"[..]));
        assert!(held.is_empty());
        let torn = Value::Array(vec![Value::Nil, Value::Int(0), bulk("s\n{}")]);
        assert!(parse_inspect_reply(torn, &name).is_err());
        assert!(parse_inspect_reply(Value::Int(1), &name).is_err());
    }

    #[test]
    fn pttl_answers() {
        assert_eq!(pttl_duration(-2), None);
        assert_eq!(pttl_duration(-1), None);
        assert_eq!(pttl_duration(1500), Some(Duration::from_millis(1500)));
    }
}
