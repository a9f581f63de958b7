//! The built-in MCP tools that answer at once (`countdown`, which streams, is a call of the
//! parent module), and how `tools/list` and tool results look.

use std::time::Instant;

use serde_json::{json, Value};

use super::MAX_COUNTDOWN;
use crate::proto::auth::Grant;
use crate::proto::engine::{Engine, FORBIDDEN_TOPIC};
use crate::proto::hub::{self, EventId};

impl Engine {
    /// The built-in tools that answer at once.
    pub(super) fn call_tool(
        &mut self,
        now: Instant,
        name: &str,
        arguments: &Value,
        grant: &Grant,
    ) -> Result<String, ToolError> {
        let forbidden = || Err(ToolError::Failed(FORBIDDEN_TOPIC.into()));
        match name {
            "echo" => match arguments.get("text").and_then(Value::as_str) {
                Some(text) => Ok(text.to_owned()),
                None => Err(ToolError::Failed("echo needs text, a string".into())),
            },
            "publish" => {
                let topic = arguments.get("topic").and_then(Value::as_str).unwrap_or("");
                let event = arguments.get("event").and_then(Value::as_str);
                let data = arguments.get("data").unwrap_or(&Value::Null);
                if !grant.may_publish(topic) {
                    return forbidden();
                }
                match self.publish(now, topic, event, data) {
                    Ok(id) => Ok(json!({"id": id.to_string()}).to_string()),
                    Err(e) => Err(ToolError::Failed(e.reason().into())),
                }
            }
            "history" => {
                let topic = arguments.get("topic").and_then(Value::as_str).unwrap_or("");
                if !hub::valid_topic(topic) {
                    return Err(ToolError::Failed(
                        hub::HubError::InvalidTopic.reason().into(),
                    ));
                }
                if !grant.may_subscribe(topic) {
                    return forbidden();
                }
                let since = arguments
                    .get("since")
                    .and_then(Value::as_str)
                    .and_then(EventId::parse);
                let limit = arguments
                    .get("limit")
                    .and_then(Value::as_u64)
                    .map_or(usize::MAX, |l| l as usize);
                Ok(hub::envelopes_json(&self.hub.history(topic, since, limit)))
            }
            "topics" => {
                let mut names: Vec<&str> = self.hub.topic_names().collect();
                names.sort_unstable();
                Ok(json!(names).to_string())
            }
            _ => Err(ToolError::Unknown),
        }
    }
}

/// A `tools/call` result: text content, or an error text with `isError`.
pub(super) fn tool_result(result: Result<String, String>) -> Value {
    let (text, is_error) = match result {
        Ok(text) => (text, false),
        Err(text) => (text, true),
    };
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

/// The built-in tools, as `tools/list` gives them.
pub(super) fn tool_list() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns the text it is given",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
        {
            "name": "countdown",
            "description": "Sends n progress notifications, interval_ms apart, then returns done",
            "inputSchema": {"type": "object", "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": MAX_COUNTDOWN},
                "interval_ms": {"type": "integer", "minimum": 1, "default": 100},
            }, "required": ["n"]},
        },
        {
            "name": "publish",
            "description": "Publishes an event on a topic of the hub; returns its id",
            "inputSchema": {"type": "object", "properties": {
                "topic": {"type": "string"}, "event": {"type": "string"}, "data": {},
            }, "required": ["topic"]},
        },
        {
            "name": "history",
            "description": "The retained events of a topic, oldest first",
            "inputSchema": {"type": "object", "properties": {
                "topic": {"type": "string"}, "since": {"type": "string"},
                "limit": {"type": "integer", "minimum": 0},
            }, "required": ["topic"]},
        },
        {
            "name": "topics",
            "description": "The names of the hub's topics",
            "inputSchema": {"type": "object", "properties": {}},
        },
    ])
}

pub(super) enum ToolError {
    Unknown,
    Failed(String),
}
