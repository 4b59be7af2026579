//! Content keys of the output ledger.
//!
//! An output is identified by the hash of everything that determines it: the stage, the template
//! and its version, the rendered messages (which contain the inputs), the teacher's protocol and
//! model, and the sampling parameters. The same key means the same question to the same teacher: its accepted
//! answer is reused, across redeliveries and across runs, and written at most once.

use crate::prompt::RenderedPrompt;
use crate::settings::{EndpointSettings, Protocol, SamplingParams};
use crate::stage::Stage;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputKey(pub [u8; 32]);

/// Field of `tasks.input` that salts a task's content key. An incremental run sets it on tasks
/// whose output expired (`regenerate.ttl_days`): the same prompt to the same teacher then has
/// another key, so the ledger does not hand back the expired answer and the teacher is asked.
pub const KEY_SALT_FIELD: &str = "key_salt";

#[derive(Serialize)]
struct KeyMaterial<'a> {
    stage: Stage,
    template: &'a str,
    template_version: &'a str,
    messages: &'a [crate::prompt::ChatMessage],
    /// Absent for OpenAI, so the keys of outputs made before protocols existed stay the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    model: &'a str,
    params: &'a SamplingParams,
    /// Absent unless salted, so unsalted keys are the ones computed before salts existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    salt: Option<&'a str>,
}

impl OutputKey {
    pub fn compute(stage: Stage, prompt: &RenderedPrompt, model: &str, params: &SamplingParams) -> Self {
        Self::compute_salted(stage, prompt, model, params, None)
    }

    /// The salt of a task's input ([`KEY_SALT_FIELD`]), if it has one.
    pub fn salt_of(input: &serde_json::Value) -> Option<&str> {
        input.get(KEY_SALT_FIELD).and_then(|v| v.as_str())
    }

    /// The key of `prompt` asked of `endpoint` (its protocol, model and sampling parameters),
    /// salted as [`OutputKey::compute_salted`]. What workers use.
    pub fn for_endpoint(
        stage: Stage,
        prompt: &RenderedPrompt,
        endpoint: &EndpointSettings,
        salt: Option<&str>,
    ) -> Self {
        Self::material(stage, prompt, endpoint.protocol, &endpoint.model, &endpoint.params, salt)
    }

    /// [`OutputKey::compute`] with a salt (see [`KEY_SALT_FIELD`]); `None` gives the same key.
    pub fn compute_salted(
        stage: Stage,
        prompt: &RenderedPrompt,
        model: &str,
        params: &SamplingParams,
        salt: Option<&str>,
    ) -> Self {
        Self::material(stage, prompt, Protocol::OpenAi, model, params, salt)
    }

    fn material(
        stage: Stage,
        prompt: &RenderedPrompt,
        protocol: Protocol,
        model: &str,
        params: &SamplingParams,
        salt: Option<&str>,
    ) -> Self {
        let material = KeyMaterial {
            protocol: (protocol != Protocol::OpenAi).then_some(protocol.as_str()),
            stage,
            template: &prompt.template,
            template_version: &prompt.version,
            messages: &prompt.messages,
            model,
            params,
            salt,
        };
        // Field order is fixed by the struct, so the JSON bytes are canonical.
        let bytes = serde_json::to_vec(&material).unwrap_or_default();
        OutputKey(Sha256::digest(&bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(OutputKey)
    }
}

impl fmt::Debug for OutputKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutputKey({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for OutputKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::ChatMessage;

    fn prompt(text: &str, version: &str) -> RenderedPrompt {
        RenderedPrompt {
            template: "reasoning.movielens".into(),
            version: version.into(),
            messages: vec![ChatMessage { role: "user".into(), content: text.into() }],
        }
    }

    #[test]
    fn key_changes_with_every_input() {
        let p = SamplingParams::default();
        let base = OutputKey::compute(Stage::Reasoning, &prompt("a", "v1"), "m", &p);
        assert_eq!(base, OutputKey::compute(Stage::Reasoning, &prompt("a", "v1"), "m", &p));
        assert_ne!(base, OutputKey::compute(Stage::UserProfile, &prompt("a", "v1"), "m", &p));
        assert_ne!(base, OutputKey::compute(Stage::Reasoning, &prompt("b", "v1"), "m", &p));
        assert_ne!(base, OutputKey::compute(Stage::Reasoning, &prompt("a", "v2"), "m", &p));
        assert_ne!(base, OutputKey::compute(Stage::Reasoning, &prompt("a", "v1"), "m2", &p));
        let hot = SamplingParams { temperature: 0.7, ..p.clone() };
        assert_ne!(base, OutputKey::compute(Stage::Reasoning, &prompt("a", "v1"), "m", &hot));
        assert_eq!(OutputKey::from_slice(base.as_bytes()), Some(base));
        assert_eq!(base, OutputKey::compute_salted(Stage::Reasoning, &prompt("a", "v1"), "m", &p, None));
        let salted = OutputKey::compute_salted(Stage::Reasoning, &prompt("a", "v1"), "m", &p, Some("r2"));
        assert_ne!(base, salted);
        assert_ne!(salted, OutputKey::compute_salted(Stage::Reasoning, &prompt("a", "v1"), "m", &p, Some("r3")));
        assert_eq!(OutputKey::salt_of(&serde_json::json!({"user": 1, "key_salt": "r2"})), Some("r2"));
    }

    #[test]
    fn the_protocol_is_part_of_the_key_and_openai_keys_did_not_change() {
        let openai = EndpointSettings { model: "m".into(), ..EndpointSettings::default() };
        let anthropic = EndpointSettings { protocol: Protocol::Anthropic, ..openai.clone() };
        let p = prompt("a", "v1");
        let before = OutputKey::compute(Stage::Reasoning, &p, "m", &openai.params);
        assert_eq!(OutputKey::for_endpoint(Stage::Reasoning, &p, &openai, None), before);
        assert_ne!(OutputKey::for_endpoint(Stage::Reasoning, &p, &anthropic, None), before);
    }

    #[test]
    fn unsalted_keys_did_not_change() {
        // The key of this prompt before salts existed: ledger rows written then stay reachable.
        let k = OutputKey::compute(Stage::Reasoning, &prompt("a", "v1"), "m", &SamplingParams::default());
        // sha256 of {"stage":"reasoning","template":"reasoning.movielens","template_version":"v1",
        // "messages":[{"role":"user","content":"a"}],"model":"m","params":{"temperature":0.1,
        // "top_p":null,"max_tokens":256,"stop":[]}}: no salt field.
        assert_eq!(k.to_string(), "c300197de0263222837b5b882e5f417111c58b95770bb55e1ee737be780887e8");
    }
}
