//! Bodies and headers of the Anthropic Messages protocol (`POST {base_url}/messages`), the
//! subset teachers need: a system prompt as its own field, user/assistant turns, `max_tokens`
//! (required), `stop_reason`, `usage` with the prompt cache's counts, and the
//! `anthropic-ratelimit-*` headers. Shared by the client and the mock teacher.

use reasonrec_core::ChatMessage;
use reasonrec_core::settings::TokenUsage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    /// The system prompt; Anthropic has no `system` role among the messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
}

/// One turn: the string shorthand of a single text block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

impl MessagesRequest {
    /// Our chat messages in Anthropic's shape: `system` messages joined into the system field,
    /// the others kept in order (consecutive turns of one role are merged, as the API does).
    pub fn from_chat(model: &str, messages: &[ChatMessage], max_tokens: u32) -> Self {
        let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
        let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
        for m in messages.iter().filter(|m| m.role != "system") {
            match turns.last_mut() {
                Some(last) if last.role == m.role => {
                    last.content.push_str("\n\n");
                    last.content.push_str(&m.content);
                }
                _ => turns.push(Turn { role: m.role.clone(), content: m.content.clone() }),
            }
        }
        Self {
            model: model.to_string(),
            max_tokens,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages: turns,
            temperature: None,
            top_p: None,
            stop_sequences: Vec::new(),
        }
    }

    /// The request as chat messages again (system first): what the mock answers from.
    pub fn to_chat(&self) -> Vec<ChatMessage> {
        let system = self.system.iter().map(|s| ChatMessage { role: "system".into(), content: s.clone() });
        let turns = self.messages.iter().map(|t| ChatMessage { role: t.role.clone(), content: t.content.clone() });
        system.chain(turns).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessagesResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: Option<MessagesUsage>,
}

/// A content block. Only text blocks carry an answer; the others (thinking, tool use, ...) are
/// kept as their type so that an answer made only of them is recognised as having no text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentBlock {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MessagesUsage {
    /// Prompt tokens after the last cache breakpoint (not the whole prompt).
    pub input_tokens: u32,
    pub output_tokens: u32,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u32>,
}

impl MessagesUsage {
    /// As the ledger counts: the whole prompt (uncached + cache writes + cache reads).
    pub fn tokens(&self) -> TokenUsage {
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        TokenUsage {
            input: self.input_tokens.saturating_add(cache_write).saturating_add(cache_read),
            output: self.output_tokens,
            cache_read,
            cache_write,
        }
    }
}

impl MessagesResponse {
    /// The answer's text: its text blocks joined; None when it has none.
    pub fn text(&self) -> Option<String> {
        let texts: Vec<&str> =
            self.content.iter().filter(|b| b.kind == "text").filter_map(|b| b.text.as_deref()).collect();
        (!texts.is_empty()).then(|| texts.concat())
    }

    /// `stop_reason` in the OpenAI vocabulary the validator reads: cut off (`max_tokens`, the
    /// context window exhausted) is `length`, a safety refusal `refusal`, a natural end `stop`.
    pub fn finish_reason(&self) -> Option<String> {
        self.stop_reason.as_deref().map(|r| {
            match r {
                "max_tokens" | "model_context_window_exceeded" => "length",
                "end_turn" | "stop_sequence" => "stop",
                other => other,
            }
            .to_string()
        })
    }
}

/// The rate-limit budgets an Anthropic response reports (`anthropic-ratelimit-{kind}-*`).
pub const RATE_LIMIT_KINDS: [&str; 4] = ["requests", "tokens", "input-tokens", "output-tokens"];

/// An error body: `{"type":"error","error":{"type":..,"message":..},"request_id":..}`.
pub fn error_body(kind: &str, message: &str, request_id: &str) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn system_prompt_is_its_own_field_and_same_role_turns_merge() {
        let chat =
            [msg("system", "be brief"), msg("user", "a"), msg("user", "b"), msg("assistant", "c"), msg("user", "d")];
        let r = MessagesRequest::from_chat("claude", &chat, 100);
        assert_eq!(r.system.as_deref(), Some("be brief"));
        let roles: Vec<&str> = r.messages.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(r.messages[0].content, "a\n\nb");
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["max_tokens"], 100);
        assert!(json.get("temperature").is_none() && json.get("stop_sequences").is_none());
        assert_eq!(r.to_chat()[0], msg("system", "be brief"));
    }

    #[test]
    fn answer_text_stop_reason_and_cache_usage() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude",
            "content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"Hello "},{"type":"text","text":"there"}],
            "stop_reason":"max_tokens","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000}}"#;
        let r: Result<MessagesResponse, _> = serde_json::from_str(body);
        let Ok(r) = r else { panic!("{r:?}") };
        assert_eq!(r.text().as_deref(), Some("Hello there"));
        assert_eq!(r.finish_reason().as_deref(), Some("length"));
        let u = r.usage.map(|u| u.tokens()).unwrap_or_default();
        assert_eq!(u, TokenUsage { input: 1110, output: 5, cache_read: 1000, cache_write: 100 });
        assert_eq!(u.uncached_input(), 10);
        let only_tools: Result<MessagesResponse, _> = serde_json::from_str(
            r#"{"content":[{"type":"tool_use","id":"t","name":"n","input":{}}],"stop_reason":"tool_use"}"#,
        );
        assert!(matches!(only_tools, Ok(ref r) if r.text().is_none()));
    }
}
