//! JSON-RPC 2.0 messages as MCP uses them: requests (integer or string ids, 0 included),
//! notifications, responses, and the standard error codes.

use serde_json::{json, Map, Value};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;

/// One JSON-RPC message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A request: it gets a response with the same id.
    Request {
        /// A number or a string, echoed back exactly.
        id: Value,
        /// The method.
        method: String,
        /// The params (`null` when absent).
        params: Value,
    },
    /// A notification: no response.
    Notification {
        /// The method.
        method: String,
        /// The params (`null` when absent).
        params: Value,
    },
    /// A response to a request the other side sent.
    Response {
        /// The id of the request answered.
        id: Value,
        /// Its `result`, or its `error` object.
        outcome: Result<Value, Value>,
    },
}

impl Message {
    /// The message as JSON, ready to send on.
    pub fn encode(&self) -> Value {
        match self {
            Message::Request { id, method, params } => {
                let mut message = notification(method, params.clone());
                message["id"] = id.clone();
                message
            }
            Message::Notification { method, params } => notification(method, params.clone()),
            Message::Response {
                id,
                outcome: Ok(value),
            } => result(id, value.clone()),
            Message::Response {
                id,
                outcome: Err(error),
            } => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        }
    }
}

/// Why a value is not a JSON-RPC message: the error code and message to answer with, and the
/// id when one could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// The id of the request, if it had a usable one.
    pub id: Option<Value>,
    /// A JSON-RPC error code.
    pub code: i64,
    /// What is wrong.
    pub message: &'static str,
}

/// Reads one JSON-RPC message.
pub fn parse(value: &Value) -> Result<Message, Invalid> {
    let invalid = |id: Option<&Value>, message| Invalid {
        id: id.cloned(),
        code: INVALID_REQUEST,
        message,
    };
    let Value::Object(object) = value else {
        return Err(invalid(None, "a JSON-RPC message must be an object"));
    };
    let id = object
        .get("id")
        .filter(|id| id.is_number() || id.is_string());
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(id, "\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str() else {
            return Err(invalid(id, "\"method\" must be a string"));
        };
        let params = object.get("params").cloned().unwrap_or(Value::Null);
        if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
            return Err(invalid(id, "\"params\" must be an object or an array"));
        }
        return Ok(match object.get("id") {
            None => Message::Notification {
                method: method.to_string(),
                params,
            },
            Some(Value::Number(_)) | Some(Value::String(_)) => Message::Request {
                id: object["id"].clone(),
                method: method.to_string(),
                params,
            },
            Some(_) => return Err(invalid(None, "\"id\" must be a number or a string")),
        });
    }
    let outcome = match (object.get("result"), object.get("error")) {
        (Some(result), None) => Some(Ok(result.clone())),
        (None, Some(error)) => Some(Err(error.clone())),
        (Some(_), Some(_)) => {
            return Err(invalid(id, "a response has a result or an error, not both"))
        }
        (None, None) => None,
    };
    if let Some(outcome) = outcome {
        return match id {
            Some(id) => Ok(Message::Response {
                id: id.clone(),
                outcome,
            }),
            None => Err(invalid(None, "a response needs an id")),
        };
    }
    Err(invalid(
        id,
        "neither a request, a notification nor a response",
    ))
}

/// A successful response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response; `id` is `null` when the request's id could not be read.
pub fn error(id: Option<&Value>, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": {"code": code, "message": message}})
}

/// A notification from the server.
pub fn notification(method: &str, params: Value) -> Value {
    let mut object = Map::new();
    object.insert("jsonrpc".into(), "2.0".into());
    object.insert("method".into(), method.into());
    if !params.is_null() {
        object.insert("params".into(), params);
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        assert_eq!(
            parse(&json!({"jsonrpc":"2.0","id":0,"method":"ping"})),
            Ok(Message::Request {
                id: json!(0),
                method: "ping".into(),
                params: Value::Null
            })
        );
        assert_eq!(
            parse(&json!({"jsonrpc":"2.0","id":"a","method":"x","params":{"k":1}})),
            Ok(Message::Request {
                id: json!("a"),
                method: "x".into(),
                params: json!({"k":1})
            })
        );
        assert_eq!(
            parse(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
            Ok(Message::Notification {
                method: "notifications/initialized".into(),
                params: Value::Null
            })
        );
        assert_eq!(
            parse(&json!({"jsonrpc":"2.0","id":3,"result":{}})),
            Ok(Message::Response {
                id: json!(3),
                outcome: Ok(json!({}))
            })
        );
    }

    #[test]
    fn messages_encode_back_to_what_was_parsed() {
        for text in [
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"},"id":7}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}"#,
            r#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"no"}}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(&value).unwrap().encode(), value, "{text}");
        }
        let both = json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}});
        assert!(parse(&both).is_err());
    }

    #[test]
    fn invalid_messages_say_why_and_keep_a_usable_id() {
        let e = parse(&json!({"id":1,"method":"x"})).unwrap_err();
        assert_eq!((e.id, e.code), (Some(json!(1)), INVALID_REQUEST));
        let e = parse(&json!({"jsonrpc":"2.0","id":null,"method":"x"})).unwrap_err();
        assert_eq!(e.id, None);
        let e = parse(&json!({"jsonrpc":"2.0","id":1,"method":"x","params":3})).unwrap_err();
        assert_eq!(e.message, "\"params\" must be an object or an array");
        assert!(parse(&json!([1])).is_err());
        assert!(parse(&json!({"jsonrpc":"2.0"})).is_err());
    }

    #[test]
    fn answers_are_well_formed() {
        assert_eq!(
            error(None, PARSE_ERROR, "bad").to_string(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}"#
        );
        assert_eq!(
            result(&json!(0), json!({})).to_string(),
            r#"{"jsonrpc":"2.0","id":0,"result":{}}"#
        );
        assert_eq!(
            notification("notifications/x", Value::Null).to_string(),
            r#"{"jsonrpc":"2.0","method":"notifications/x"}"#
        );
    }
}
