//! From a task row to a rendered prompt, for each stage.
//!
//! Item text in prompts = title, year, genres (MovieLens) or title, brand, price, description
//! (Amazon), plus the item's profile when the item-profile stage wrote one. The user profile is
//! the user-profile task's output. Both are read through the task's dependency edges, so a
//! reasoning prompt contains exactly the upstream outputs its task waited for.

use crate::error::WorkerError;
use crate::reviews::{ReviewView, sample_reviews};
use reasonrec_core::Settings;
use reasonrec_core::inputs::{HistoryEntry, ItemProfileInput, ReasoningInput, UserProfileInput};
use reasonrec_core::settings::Overlong;
use reasonrec_core::stage::Stage;
use reasonrec_core::validate::word_count;
use reasonrec_core::view::ItemView;
use reasonrec_core::{CoreError, PromptLibrary, RenderedPrompt};
use reasonrec_store::Store;
use reasonrec_store::tasks::{ItemRow, TaskBundle, TaskContext};
use serde::Deserialize;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Serialize)]
struct ItemProfileContext {
    item: ItemView,
    reviews: Vec<ReviewView>,
}

#[derive(Serialize)]
struct UserProfileContext {
    window: Vec<ItemView>,
}

#[derive(Serialize)]
struct ReasoningContext {
    user_profile: Option<String>,
    history: Vec<ItemView>,
    target: ItemView,
    label: bool,
}

/// A judge sees what its reasoning task's prompt showed, and the reasoning's answer.
#[derive(Serialize)]
struct JudgeContext {
    #[serde(flatten)]
    shown: ReasoningContext,
    rationale: String,
}

fn bad_input(task: &TaskContext, e: impl std::fmt::Display) -> CoreError {
    CoreError::BadMessage(format!("task {} ({}) has a malformed input: {e}", task.id, task.stage))
}

/// What the renderer needs from the store for one task.
struct Inputs<'a> {
    items: &'a HashMap<i32, ItemRow>,
    item_profiles: HashMap<i32, String>,
    user_profile: Option<String>,
    /// A judge task's reasoning output.
    rationale: Option<String>,
}

fn inputs(bundle: &TaskBundle) -> Inputs<'_> {
    let mut item_profiles = HashMap::new();
    let mut user_profile = None;
    let mut rationale = None;
    for dep in &bundle.deps {
        match (dep.stage, &dep.text) {
            (Stage::ItemProfile, Some(t)) => {
                if let Some(i) = dep.item_id {
                    item_profiles.insert(i, t.clone());
                }
            }
            (Stage::UserProfile, Some(t)) => user_profile = Some(t.clone()),
            (Stage::Reasoning, Some(t)) => rationale = Some(t.clone()),
            _ => {}
        }
    }
    Inputs { items: &bundle.items, item_profiles, user_profile, rationale }
}

impl Inputs<'_> {
    fn item(&self, task: &TaskContext, id: i32, liked: Option<bool>) -> Result<ItemView, CoreError> {
        let row = self.items.get(&id).ok_or_else(|| bad_input(task, format!("item {id} is not in its dataset")))?;
        Ok(ItemView::new(&row.title, &row.attrs, self.item_profiles.get(&id).cloned(), liked))
    }

    fn window(&self, task: &TaskContext, entries: &[HistoryEntry]) -> Result<Vec<ItemView>, CoreError> {
        entries.iter().map(|h| self.item(task, h.item, Some(h.liked))).collect()
    }

    /// What a reasoning prompt shows (a judge's prompt shows it again).
    fn reasoning(&self, task: &TaskContext) -> Result<ReasoningContext, CoreError> {
        let input: ReasoningInput = Deserialize::deserialize(&task.input).map_err(|e| bad_input(task, e))?;
        let label = task.label.ok_or_else(|| bad_input(task, "no label"))?;
        Ok(ReasoningContext {
            user_profile: self.user_profile.clone(),
            history: self.window(task, &input.history)?,
            target: self.item(task, input.target, None)?,
            label,
        })
    }
}

/// The caps on rendered prompts: the method's word cap (`sampling.max_prompt_words`, handled as
/// `sampling.overlong` says) and the smallest context window of the configured endpoints
/// (`context_tokens` less `params.max_tokens`, estimated at `chars_per_token`), which is always
/// met by trimming: a server cannot take a prompt that does not fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptCap {
    pub max_words: usize,
    pub overlong: Overlong,
    /// Estimated prompt tokens at most; 0 = no context window known.
    pub max_tokens: u32,
    pub chars_per_token: f32,
}

/// Which cap a prompt is over, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Words(usize),
    Tokens(u32),
}

impl PromptCap {
    pub const NONE: PromptCap =
        PromptCap { max_words: 0, overlong: Overlong::Truncate, max_tokens: 0, chars_per_token: 4.0 };

    pub fn from_settings(s: &Settings) -> Self {
        // The prompt must fit whichever endpoint the pool picks.
        let windowed =
            s.teacher.endpoints.iter().filter_map(|e| e.prompt_token_budget().map(|b| (b, e.chars_per_token)));
        let max_tokens = windowed.clone().map(|(b, _)| b).min().unwrap_or(0);
        let chars_per_token = windowed.map(|(_, c)| c).fold(f32::INFINITY, f32::min);
        Self {
            max_words: s.sampling.max_prompt_words,
            overlong: s.sampling.overlong,
            max_tokens,
            chars_per_token: if chars_per_token.is_finite() { chars_per_token } else { 4.0 },
        }
    }

    /// Prompt tokens by this cap's estimate: characters / `chars_per_token`, rounded up, plus
    /// 4 tokens of chat framing per message.
    pub fn estimate_tokens(&self, prompt: &RenderedPrompt) -> u32 {
        self.estimate_messages(&prompt.messages)
    }

    fn estimate_messages(&self, messages: &[reasonrec_core::ChatMessage]) -> u32 {
        let per = f64::from(self.chars_per_token.max(0.5));
        messages.iter().map(|m| (m.content.chars().count() as f64 / per).ceil() as u32 + 4).sum()
    }

    /// The conversation of a re-ask: `messages`, the rejected answer and the validator's
    /// `feedback`. When the answer would carry it past the context window, the answer is left
    /// out and the feedback alone follows the prompt (which the trimming made fit).
    pub fn reask(&self, messages: &mut Vec<reasonrec_core::ChatMessage>, answer: String, feedback: String) {
        let answer = reasonrec_core::ChatMessage { role: "assistant".into(), content: answer };
        let feedback = reasonrec_core::ChatMessage { role: "user".into(), content: feedback };
        let fits = self.max_tokens == 0
            || self.estimate_messages(messages) + self.estimate_messages(&[answer.clone(), feedback.clone()])
                <= self.max_tokens;
        if fits {
            messages.push(answer);
        }
        messages.push(feedback);
    }

    fn over(&self, prompt: &RenderedPrompt) -> Option<Over> {
        if self.max_tokens > 0 {
            let tokens = self.estimate_tokens(prompt);
            if tokens > self.max_tokens {
                return Some(Over::Tokens(tokens));
            }
        }
        let words = prompt.messages.iter().map(|m| word_count(&m.content)).sum();
        (self.max_words > 0 && words > self.max_words).then_some(Over::Words(words))
    }

    /// Whether to drop the oldest history entry and render again.
    fn trims(&self, prompt: &RenderedPrompt) -> bool {
        match self.over(prompt) {
            Some(Over::Tokens(_)) => true,
            Some(Over::Words(_)) => self.overlong == Overlong::Truncate,
            None => false,
        }
    }

    fn too_long(&self, over: Over) -> WorkerError {
        match over {
            Over::Words(words) => WorkerError::PromptTooLong {
                size: words as u64,
                unit: "words",
                cap: self.max_words as u64,
                setting: "sampling.max_prompt_words",
            },
            Over::Tokens(tokens) => WorkerError::PromptTooLong {
                size: u64::from(tokens),
                unit: "estimated tokens",
                cap: u64::from(self.max_tokens),
                setting: "teacher.endpoints.context_tokens less params.max_tokens",
            },
        }
    }
}

/// A rendered prompt and how many history (or profile-window) entries were cut to fit the cap.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub prompt: RenderedPrompt,
    pub truncated: i32,
}

/// Renders `task`'s prompt without a length cap, reading what it needs.
pub async fn render_task(
    store: &Store,
    prompts: &PromptLibrary,
    task: &TaskContext,
) -> Result<RenderedPrompt, WorkerError> {
    let bundle = store
        .tasks()
        .load_bundles(&[task.id])
        .await?
        .remove(&task.id)
        .ok_or_else(|| reasonrec_store::StoreError::NotFound(format!("task {}", task.id)))?;
    Ok(render_capped(store, prompts, &bundle, PromptCap::NONE).await?.prompt)
}

/// Renders `task`'s prompt, reading the items it mentions and its upstream outputs. Over a cap
/// it trims (see [`PromptCap`]), the oldest entries of the history (reasoning) or window (user
/// profile) are dropped until it fits, keeping at least one; what still does not fit is
/// `PromptTooLong`.
pub async fn render_capped(
    store: &Store,
    prompts: &PromptLibrary,
    bundle: &TaskBundle,
    cap: PromptCap,
) -> Result<Rendered, WorkerError> {
    let task = &bundle.task;
    // The one read rendering makes beyond the bundle: an item profile's reviews.
    let reviews = match task.stage {
        Stage::ItemProfile => {
            let input: ItemProfileInput = Deserialize::deserialize(&task.input).map_err(|e| bad_input(task, e))?;
            sample_reviews(input.item, &store.tasks().item_reviews(task.dataset_id, input.item).await?)
        }
        _ => Vec::new(),
    };
    render_bundle(prompts, bundle, reviews, cap)
}

/// [`render_capped`] once the reviews are read: no I/O.
fn render_bundle(
    prompts: &PromptLibrary,
    bundle: &TaskBundle,
    reviews: Vec<ReviewView>,
    cap: PromptCap,
) -> Result<Rendered, WorkerError> {
    let task = &bundle.task;
    let family = task.family.as_str();
    let inputs = inputs(bundle);
    let trimmed = Trimmed { prompts, family, cap };
    let (prompt, truncated) = match task.stage {
        Stage::ItemProfile => {
            let input: ItemProfileInput = Deserialize::deserialize(&task.input).map_err(|e| bad_input(task, e))?;
            let ctx = ItemProfileContext { item: inputs.item(task, input.item, None)?, reviews };
            (prompts.render(Stage::ItemProfile, family, &ctx)?, 0)
        }
        Stage::UserProfile => {
            let input: UserProfileInput = Deserialize::deserialize(&task.input).map_err(|e| bad_input(task, e))?;
            let ctx = UserProfileContext { window: inputs.window(task, &input.window)? };
            trimmed.render(Stage::UserProfile, ctx, |c| &mut c.window)?
        }
        Stage::Reasoning => trimmed.render(Stage::Reasoning, inputs.reasoning(task)?, |c| &mut c.history)?,
        Stage::Judge => {
            // The reasoning failed (its dependents are released all the same): nothing to judge.
            // Should it succeed later, this task is planned again with its answer.
            let rationale = inputs.rationale.clone().ok_or_else(|| {
                CoreError::BadMessage(format!("task {} (judge): its reasoning task has no answer to judge", task.id))
            })?;
            let ctx = JudgeContext { shown: inputs.reasoning(task)?, rationale };
            trimmed.render(Stage::Judge, ctx, |c| &mut c.shown.history)?
        }
    };
    if let Some(over) = cap.over(&prompt) {
        return Err(cap.too_long(over));
    }
    Ok(Rendered { prompt, truncated })
}

/// Renders a context whose list of items (a history or a profile window) may be cut to fit.
struct Trimmed<'a> {
    prompts: &'a PromptLibrary,
    family: &'a str,
    cap: PromptCap,
}

impl Trimmed<'_> {
    /// Renders `ctx` with `stage`'s template, dropping the oldest entry of `entries(ctx)` while
    /// the cap says to trim (keeping one); returns the prompt and how many entries were dropped.
    fn render<C: Serialize>(
        &self,
        stage: Stage,
        mut ctx: C,
        entries: impl Fn(&mut C) -> &mut Vec<ItemView>,
    ) -> Result<(RenderedPrompt, i32), CoreError> {
        let mut truncated = 0;
        let mut prompt = self.prompts.render(stage, self.family, &ctx)?;
        while self.cap.trims(&prompt) && entries(&mut ctx).len() > 1 {
            entries(&mut ctx).remove(0);
            truncated += 1;
            prompt = self.prompts.render(stage, self.family, &ctx)?;
        }
        Ok((prompt, truncated))
    }
}

/// A task's prompt rendered again from its stored inputs, as the task page shows it, and
/// whether it is the prompt the stored output answered: its content key, computed for each
/// configured endpoint, equals the task's output key.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PromptAsSent {
    pub prompt: RenderedPrompt,
    /// History entries cut to fit the caps (as the worker cut them).
    pub truncated: i32,
    /// The endpoint whose key matches the task's output; None when none does (the inputs
    /// changed since, or another teacher configuration made it) or the task has no output.
    pub key_matches: Option<String>,
    /// The task has an output to compare with.
    pub has_output: bool,
}

/// Renders `task_id`'s prompt under the worker's caps and checks it against its output key.
pub async fn prompt_as_sent(
    store: &Store,
    prompts: &PromptLibrary,
    settings: &Settings,
    task_id: uuid::Uuid,
) -> Result<PromptAsSent, WorkerError> {
    let bundle = store
        .tasks()
        .load_bundles(&[task_id])
        .await?
        .remove(&task_id)
        .ok_or_else(|| reasonrec_store::StoreError::NotFound(format!("task {task_id}")))?;
    let rendered = render_capped(store, prompts, &bundle, PromptCap::from_settings(settings)).await?;
    let stored: Option<Vec<u8>> = store.browser().output_key_of(task_id).await?;
    let salt = reasonrec_core::OutputKey::salt_of(&bundle.task.input);
    let key_matches = stored.as_deref().and_then(|stored| {
        settings
            .teacher
            .endpoints
            .iter()
            .find(|e| {
                reasonrec_core::OutputKey::for_endpoint(bundle.task.stage, &rendered.prompt, e, salt).as_bytes()
                    == stored
            })
            .map(|e| e.name.clone())
    });
    Ok(PromptAsSent {
        prompt: rendered.prompt,
        truncated: rendered.truncated,
        key_matches,
        has_output: stored.is_some(),
    })
}

/// [`prompt_as_sent`] as the corpus browser calls it: a [`reasonrec_core::task_view::TaskView`].
pub fn prompt_checker(store: Store, settings: &Settings) -> Result<reasonrec_core::task_view::TaskView, WorkerError> {
    let prompts = std::sync::Arc::new(PromptLibrary::load(&settings.prompts.dir)?);
    let settings = std::sync::Arc::new(settings.clone());
    Ok(reasonrec_core::task_view::task_view(move |task| {
        let (store, prompts, settings) = (store.clone(), prompts.clone(), settings.clone());
        async move { prompt_as_sent(&store, &prompts, &settings, task).await }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reasonrec_core::ChatMessage;
    use reasonrec_core::data::Family;
    use reasonrec_core::stage::{RunState, TaskState};
    use reasonrec_store::tasks::DependencyOutput;
    use std::sync::Arc;

    fn prompts() -> PromptLibrary {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../prompts");
        PromptLibrary::load(&dir).unwrap_or_else(|e| panic!("the repository's prompts load: {e}"))
    }

    /// A reasoning task (or, with `stage`, its judge) of user 1: `history` items 1..=n liked in
    /// turn, target item 100; items 1..=n and 100 exist.
    fn bundle(stage: Stage, n: i32, deps: Vec<DependencyOutput>) -> TaskBundle {
        let history: Vec<serde_json::Value> =
            (1..=n).map(|i| serde_json::json!({"item": i, "liked": i % 2 == 0, "rating": 4.0})).collect();
        let items = (1..=n)
            .chain([100])
            .map(|i| {
                (i, ItemRow { id: i, title: format!("Film {i}"), attrs: serde_json::json!({"genres": ["Drama"]}) })
            })
            .collect();
        TaskBundle {
            task: TaskContext {
                id: uuid::Uuid::nil(),
                run_id: uuid::Uuid::nil(),
                stage,
                state: TaskState::Ready,
                run_state: RunState::Running,
                dataset_id: 1,
                family: Family::Movielens,
                user_id: Some(1),
                item_id: Some(100),
                split: Some(reasonrec_core::Split::Test),
                label: Some(true),
                input: serde_json::json!({"user": 1, "target": 100, "rating": 5.0, "history": history}),
                inputs_version: 0,
                live_reask: false,
            },
            items: Arc::new(items),
            deps,
        }
    }

    fn text(r: &Rendered) -> String {
        r.prompt.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_reasoning_prompt_shows_its_history_target_and_upstream_profile() {
        let profile = DependencyOutput {
            stage: Stage::UserProfile,
            user_id: Some(1),
            item_id: None,
            text: Some("Loves slow dramas.".into()),
        };
        let r = render_bundle(&prompts(), &bundle(Stage::Reasoning, 3, vec![profile]), vec![], PromptCap::NONE)
            .unwrap_or_else(|e| panic!("renders: {e}"));
        let t = text(&r);
        for shown in ["Film 1", "Film 2", "Film 3", "Film 100", "Loves slow dramas."] {
            assert!(t.contains(shown), "{shown:?} missing from:\n{t}");
        }
        assert_eq!(r.truncated, 0);
    }

    #[test]
    fn an_overlong_history_is_cut_from_the_oldest_until_the_cap_is_met() {
        let full = render_bundle(&prompts(), &bundle(Stage::Reasoning, 12, vec![]), vec![], PromptCap::NONE)
            .unwrap_or_else(|e| panic!("renders: {e}"));
        let words = full.prompt.messages.iter().map(|m| word_count(&m.content)).sum::<usize>();
        let cap = PromptCap { max_words: words - 1, overlong: Overlong::Truncate, ..PromptCap::NONE };
        let cut = render_bundle(&prompts(), &bundle(Stage::Reasoning, 12, vec![]), vec![], cap)
            .unwrap_or_else(|e| panic!("renders: {e}"));
        assert!(cut.truncated >= 1, "cut to fit");
        let t = text(&cut);
        assert!(!t.contains("Film 1\n") && !t.contains("Film 1 "), "the oldest entry went first:\n{t}");
        assert!(t.contains("Film 12"), "the newest stays");
        let drop = PromptCap { overlong: Overlong::Drop, ..cap };
        let refused = render_bundle(&prompts(), &bundle(Stage::Reasoning, 12, vec![]), vec![], drop);
        assert!(matches!(refused, Err(WorkerError::PromptTooLong { unit: "words", .. })), "{refused:?}");
    }

    #[test]
    fn a_judge_needs_the_answer_it_judges_and_a_missing_item_is_a_bad_input() {
        let judged = render_bundle(&prompts(), &bundle(Stage::Judge, 2, vec![]), vec![], PromptCap::NONE);
        assert!(matches!(&judged, Err(e) if e.to_string().contains("no answer to judge")), "{judged:?}");
        let answer = DependencyOutput {
            stage: Stage::Reasoning,
            user_id: Some(1),
            item_id: Some(100),
            text: Some("Prediction: Yes. Because.".into()),
        };
        let r = render_bundle(&prompts(), &bundle(Stage::Judge, 2, vec![answer]), vec![], PromptCap::NONE)
            .unwrap_or_else(|e| panic!("renders: {e}"));
        assert!(text(&r).contains("Prediction: Yes. Because."));
        let mut b = bundle(Stage::Reasoning, 2, vec![]);
        b.items = Arc::new(HashMap::new());
        let missing = render_bundle(&prompts(), &b, vec![], PromptCap::NONE);
        assert!(matches!(&missing, Err(e) if e.to_string().contains("item 1 is not in its dataset")), "{missing:?}");
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage { role: "user".into(), content: text.into() }
    }

    #[test]
    fn a_reask_leaves_the_rejected_answer_out_when_it_would_not_fit_the_window() {
        let cap = PromptCap { max_tokens: 60, chars_per_token: 4.0, ..PromptCap::NONE };
        // 100 characters: 25 + 4 tokens.
        let mut messages = vec![user(&"p".repeat(100))];
        cap.reask(&mut messages, "a".repeat(40), "not accepted: too short".into());
        assert_eq!(messages.len(), 3, "29 + 14 + 10 tokens fit in 60: {messages:?}");
        let mut messages = vec![user(&"p".repeat(100))];
        cap.reask(&mut messages, "a".repeat(200), "not accepted: truncated".into());
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "user"], "the long answer is left out, the feedback kept");
        let mut messages = vec![user("p")];
        PromptCap::NONE.reask(&mut messages, "a".repeat(10_000), "again".into());
        assert_eq!(messages.len(), 3, "no window: the whole conversation");
    }
}
