//! One student example from one done reasoning task: the student prompt (rendered from
//! `prompts/student.<family>.j2` with the user profile, the history the teacher saw and the target,
//! never the label) and the target text "Prediction: Yes|No\nReasoning: <the teacher's reasoning>".

use std::collections::HashMap;

use reasonrec_core::inputs::ReasoningInput;
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

/// What the student template sees. No label: the student must predict it.
#[derive(Serialize)]
struct StudentContext {
    user_profile: Option<String>,
    history: Vec<ItemView>,
    target: ItemView,
}

/// The items and profile outputs one page of tasks mentions.
#[derive(Debug, Default)]
pub struct PageData {
    pub items: HashMap<i32, ItemRow>,
    pub item_profiles: HashMap<i32, String>,
    pub user_profiles: HashMap<i32, String>,
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

/// The parsed input of a task, with the history the teacher saw (the oldest
/// `history_truncated` entries dropped).
pub fn task_input(task: &ExportTask) -> Result<ReasoningInput, TrainerError> {
    use serde::Deserialize;
    let mut input = ReasoningInput::deserialize(&task.input)
        .map_err(|e| TrainerError::BadTask { task: task.id, message: format!("malformed input: {e}") })?;
    let cut = usize::try_from(task.history_truncated.max(0)).unwrap_or(0).min(input.history.len());
    input.history.drain(..cut);
    Ok(input)
}

fn item_view(task: &ExportTask, data: &PageData, id: i32, liked: Option<bool>) -> Result<ItemView, TrainerError> {
    let row = data
        .items
        .get(&id)
        .ok_or_else(|| TrainerError::BadTask { task: task.id, message: format!("item {id} is not in its dataset") })?;
    Ok(ItemView::new(&row.title, &row.attrs, data.item_profiles.get(&id).cloned(), liked))
}

/// Builds the example of `task` (whose parsed input is `input`) with its `reasoning`.
pub fn build_example(
    prompts: &PromptLibrary,
    family: &str,
    task: &ExportTask,
    input: &ReasoningInput,
    reasoning: &str,
    data: &PageData,
) -> Result<StudentExample, TrainerError> {
    let history =
        input.history.iter().map(|h| item_view(task, data, h.item, Some(h.liked))).collect::<Result<Vec<_>, _>>()?;
    let ctx = StudentContext {
        user_profile: data.user_profiles.get(&task.user_id).cloned(),
        history,
        target: item_view(task, data, input.target, None)?,
    };
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
        split: task.split.clone(),
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
        let task = ExportTask {
            id: uuid::Uuid::nil(),
            split: "test".into(),
            label: true,
            input: serde_json::json!({"user": 1, "target": 9, "rating": 4.0, "history": [
                {"item": 1, "liked": true, "rating": 5.0},
                {"item": 2, "liked": false, "rating": 1.0},
                {"item": 3, "liked": true, "rating": 4.0}]}),
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
        };
        let input = task_input(&task).map(|i| i.history.iter().map(|h| h.item).collect::<Vec<_>>());
        assert_eq!(input.ok(), Some(vec![3]));
        let bad = ExportTask { input: serde_json::json!({"user": 1}), ..task };
        assert!(matches!(task_input(&bad), Err(TrainerError::BadTask { .. })));
    }
}
