//! Bodies of the OpenAI chat-completions protocol (the subset teachers must speak).

use reasonrec_core::ChatMessage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: AssistantMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    #[serde(default)]
    pub role: String,
    /// Null for tool calls; teachers answering our prompts always send text.
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

impl Usage {
    /// The counts as the ledger keeps them.
    pub fn tokens(&self) -> reasonrec_core::settings::TokenUsage {
        reasonrec_core::settings::TokenUsage {
            input: self.prompt_tokens,
            output: self.completion_tokens,
            ..Default::default()
        }
    }
}

/// Documented estimate used when a server omits `usage`: one token per 4 characters, rounded up
/// (the usual rule of thumb for English text with BPE tokenizers). Also used by the mock teacher.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u32;
    chars.div_ceil(4)
}

/// Estimated prompt tokens of a message list (content plus ~4 tokens of chat framing per message).
pub fn estimate_prompt_tokens(messages: &[ChatMessage]) -> u32 {
    messages.iter().map(|m| estimate_tokens(&m.content) + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        let m = vec![ChatMessage { role: "user".into(), content: "abcdefgh".into() }];
        assert_eq!(estimate_prompt_tokens(&m), 6);
    }

    #[test]
    fn parses_a_vllm_style_answer_without_usage() {
        let body = r#"{"id":"x","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
        let r: Result<ChatCompletionResponse, _> = serde_json::from_str(body);
        assert!(matches!(r, Ok(ref r) if r.usage.is_none() && r.choices[0].message.content.as_deref() == Some("hi")));
    }
}
