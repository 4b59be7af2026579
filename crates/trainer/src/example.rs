//! One student example from one done reasoning task: the student prompt (rendered from
//! `prompts/student.<family>.j2` with the user profile, the history the teacher saw and the target,
//! never the label) and the target text "Prediction: Yes|No\nReasoning: <the teacher's reasoning>".

use std::collections::HashMap;

use reasonrec_core::view::ItemView;
use reasonrec_core::{ChatMessage, PromptLibrary};
use reasonrec_store::export::ExportTask;
use reasonrec_store::tasks::ItemRow;
use serde::Serialize;

use crate::TrainerError;

/// The prompt kind of the student template (`prompts/student.<family>.j2`).
pub const STUDENT_KIND: &str = "student";

/// One exported row. The field order is the file format (`eval.rs` and
/// `scripts/train_student.py` read it): keep it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudentExample {
    /// The reasoning task's id.
    pub id: String,
    /// train, validation or test.
    pub split: String,
    /// The dataset's own user and item ids.
    pub user_id: String,
    pub item_id: String,
    /// 1 liked, 0 disliked.
    pub label: u8,
    /// The system message.
    pub instruction: String,
    /// The user message.
    pub input: String,
    /// The assistant message: "Prediction: Yes|No\nReasoning: ...".
    pub output: String,
    /// system, user, assistant.
    pub messages: Vec<ChatMessage>,
    /// The teacher's reasoning (what `output` carries after "Reasoning: ").
    pub reasoning: String,
}

/// What the student template sees. No label: the student must predict it. The items are
/// template values built once per (item, liked) and shared between rows ([`PageData::view`]):
/// minijinja passes a nested `Value` on by reference count instead of serialising it again.
#[derive(Serialize)]
struct StudentContext<'a> {
    user_profile: Option<&'a str>,
    history: Vec<minijinja::Value>,
    target: minijinja::Value,
}

/// The items and profile outputs one page of tasks mentions, and the template values of the
/// items built so far.
#[derive(Debug, Default)]
pub struct PageData {
    pub items: HashMap<i32, ItemRow>,
    pub item_profiles: HashMap<i32, String>,
    pub user_profiles: HashMap<i32, String>,
    /// Built item views by (item, liked): popular items recur in most rows' histories, and
    /// building a view (attributes parsed, strings copied, serialised for the template) was the
    /// larger part of rendering. Must be emptied whenever `items` or `item_profiles` lose or
    /// change an entry ([`PageData::clear_items`]).
    views: HashMap<(i32, Option<bool>), minijinja::Value>,
}

impl PageData {
    /// Forgets every item, item profile and built view.
    pub fn clear_items(&mut self) {
        self.items.clear();
        self.item_profiles.clear();
        self.views.clear();
    }

    /// The template value of item `id` as `task` shows it (`liked`: in a history; `None`: the target).
    fn view(&mut self, task: &ExportTask, id: i32, liked: Option<bool>) -> Result<minijinja::Value, TrainerError> {
        if let Some(v) = self.views.get(&(id, liked)) {
            return Ok(v.clone());
        }
        let row = self.items.get(&id).ok_or_else(|| TrainerError::BadTask {
            task: task.id,
            message: format!("item {id} is not in its dataset"),
        })?;
        let view = ItemView::new(&row.title, &row.attrs, self.item_profiles.get(&id).cloned(), liked);
        let value = minijinja::Value::from_serialize(&view);
        self.views.insert((id, liked), value.clone());
        Ok(value)
    }
}

/// The teacher's reasoning in an answer: the text after the last line that starts with
/// "Reasoning:" (any case), to the end; without such a line, the whole answer, trimmed.
pub fn extract_reasoning(answer: &str) -> &str {
    let mut found = None;
    let mut offset = 0;
    for line in answer.split_inclusive('\n') {
        let lead = line.len() - line.trim_start().len();
        let rest = &line[lead..];
        if rest.get(..10).is_some_and(|p| p.eq_ignore_ascii_case("reasoning:")) {
            found = Some(offset + lead + 10);
        }
        offset += line.len();
    }
    match found {
        Some(start) => answer[start..].trim(),
        None => answer.trim(),
    }
}

/// The assistant turn: the prediction first, then the reasoning.
pub fn target_text(label: bool, reasoning: &str) -> String {
    format!("Prediction: {}\nReasoning: {reasoning}", if label { "Yes" } else { "No" })
}

/// Cuts the task's history to what the teacher saw: the oldest `history_truncated` entries go.
pub fn cut_to_seen_history(task: &mut ExportTask) {
    let cut = usize::try_from(task.history_truncated.max(0)).unwrap_or(0).min(task.input.history.len());
    task.input.history.drain(..cut);
}

/// Builds the example of `task` (its history already cut to what the teacher saw) with its
/// `reasoning`.
pub fn build_example(
    prompts: &PromptLibrary,
    family: &str,
    task: &ExportTask,
    reasoning: &str,
    data: &mut PageData,
) -> Result<StudentExample, TrainerError> {
    let input = &task.input;
    let history =
        input.history.iter().map(|h| data.view(task, h.item, Some(h.liked))).collect::<Result<Vec<_>, _>>()?;
    let target = data.view(task, input.target, None)?;
    let ctx =
        StudentContext { user_profile: data.user_profiles.get(&task.user_id).map(String::as_str), history, target };
    let rendered = prompts.render_kind(STUDENT_KIND, family, &ctx)?;
    let join = |role: &str| {
        rendered.messages.iter().filter(|m| m.role == role).map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n\n")
    };
    let (instruction, user) = (join("system"), join("user"));
    let output = target_text(task.label, reasoning);
    let mut messages: Vec<ChatMessage> = rendered.messages.into_iter().filter(|m| m.role != "assistant").collect();
    messages.push(ChatMessage { role: "assistant".into(), content: output.clone() });
    Ok(StudentExample {
        id: task.id.to_string(),
        split: task.split.to_string(),
        user_id: task.user_ext_id.clone(),
        item_id: task.item_ext_id.clone(),
        label: u8::from(task.label),
        instruction,
        input: user,
        output,
        messages,
        reasoning: reasoning.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_the_last_reasoning_paragraph() {
        let a = "Summary: likes heists.\n\nReasoning: «Heat» is a strong match.\nIt has a great cast.\n";
        assert_eq!(extract_reasoning(a), "«Heat» is a strong match.\nIt has a great cast.");
        assert_eq!(extract_reasoning("Summary: x\nREASONING:  tail "), "tail");
        assert_eq!(extract_reasoning("  no prefix at all \n"), "no prefix at all");
        // Only at the start of a line.
        assert_eq!(extract_reasoning("The Reasoning: inline"), "The Reasoning: inline");
        assert_eq!(extract_reasoning("Reasoning: a\n  Reasoning: b"), "b");
    }

    #[test]
    fn target_puts_the_prediction_first() {
        assert_eq!(target_text(true, "r"), "Prediction: Yes\nReasoning: r");
        assert_eq!(target_text(false, "r"), "Prediction: No\nReasoning: r");
    }

    #[test]
    fn the_teacher_saw_the_truncated_history() {
        let entry = |item, liked| reasonrec_core::inputs::HistoryEntry { item, liked, rating: 4.0 };
        let mut task = ExportTask {
            id: uuid::Uuid::nil(),
            split: reasonrec_core::Split::Test,
            label: true,
            input: reasonrec_core::inputs::ReasoningInput {
                user: 1,
                target: 9,
                rating: 4.0,
                history: vec![entry(1, true), entry(2, false), entry(3, true)],
            },
            history_truncated: 2,
            user_id: 1,
            item_id: 9,
            user_ext_id: "u".into(),
            item_ext_id: "i".into(),
            text: String::new(),
            template: String::new(),
            template_version: String::new(),
            model: String::new(),
            params: serde_json::json!({}),
            audit: None,
            judge_score: None,
        };
        cut_to_seen_history(&mut task);
        assert_eq!(task.input.history.iter().map(|h| h.item).collect::<Vec<_>>(), vec![3]);
        // More cut than there is: nothing left, no panic.
        task.history_truncated = 5;
        cut_to_seen_history(&mut task);
        assert!(task.input.history.is_empty());
    }
}
