//! `reasonrec train export`: a run's finished corpus as a student fine-tuning set.
//!
//! One pass over the run's done reasoning tasks in keyset pages of task ids, three steps
//! overlapped: the next page is read (a spawned query) while this page is rendered, and the page
//! before is serialised, hashed and written on the writer thread ([`BackgroundSinks`]). Per page:
//! one query for the tasks with their ledger output, one each for the page's user profiles,
//! items and item profiles (items already read are kept between pages, up to [`ITEM_CACHE`]).
//! Each task's reasoning goes through the filters; a kept one becomes a [`StudentExample`] for
//! its split's files (`train`, `validation`, `test`; JSONL and/or Parquet). Only (id, label) of
//! kept training rows is collected; after the pass the few-shot sets are drawn from them and their
//! rows read again by id (`fewshot_<n>.*`). Memory holds up to four pages (read ahead,
//! rendering, queued for the writer, writing; [`PAGE_SIZE`] rows each), the item cache with up
//! to three built template values per item (liked, disliked, target), one Parquet row group per
//! open file, the (id, label) list (17 bytes per train row) and the dedup set (16 bytes per row)
//! — flat in the corpus size but for those last two. Files list rows in task id order; nothing depends on the
//! clock or on thread timing, so the same run exported twice gives byte-identical files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reasonrec_core::PromptLibrary;
use reasonrec_core::audit::AuditPolicy;
use reasonrec_core::stage::{RunState, Split};
use reasonrec_store::Store;
use reasonrec_store::export::{ExportCounts, ExportTask};
use uuid::Uuid;

use crate::TrainerError;
use crate::example::{PageData, STUDENT_KIND, StudentExample, build_example, cut_to_seen_history, extract_reasoning};
use crate::fewshot;
use crate::files::{BackgroundSinks, ExampleSink, FileEntry, Format};
use crate::filters::{FilterOptions, Filters};
use crate::manifest::{
    AuditCounts, DatasetInfo, ExportOptionsInfo, LabelCounts, MANIFEST_VERSION, Manifest, Provenance, RunInfo, Splits,
    TaskCounts, TemplateInfo, Templates,
};

/// Tasks read per page. Up to four pages are in memory at once (see the module doc); at 2,000 the
/// JSONL + Parquet export of a 100k-row corpus peaked at 255 MiB RSS, at 500 at 139 MiB, no
/// slower (BENCHMARKS.md).
pub const PAGE_SIZE: usize = 500;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Run(Uuid),
    /// The latest completed run of a dataset (by name, any version).
    Dataset(String),
    /// The run a snapshot names (`reasonrec corpus snapshot`).
    Snapshot(String),
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub out: PathBuf,
    pub format: Format,
    /// Export what is done now instead of waiting for the run to complete.
    pub partial: bool,
    pub filters: FilterOptions,
    /// Which outputs the audit marks let through (rejected ones never).
    pub audit: AuditPolicy,
    /// Few-shot set sizes (none: no few-shot files).
    pub few_shot: Vec<usize>,
    pub seed: u64,
    pub page_size: usize,
    /// How often to look at the run while waiting for it.
    pub poll: Duration,
    /// The snapshot the run was chosen by, recorded in the manifest.
    pub snapshot: Option<String>,
}

impl ExportOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            format: Format::Both,
            partial: false,
            filters: FilterOptions::default(),
            audit: AuditPolicy::default(),
            few_shot: Vec::new(),
            seed: 0,
            page_size: PAGE_SIZE,
            poll: Duration::from_secs(2),
            snapshot: None,
        }
    }
}

/// What the export reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the run to complete: its state and task counts.
    Waiting { state: RunState, counts: ExportCounts },
    /// Rows read and kept so far.
    Exported { read: u64, kept: u64 },
}

/// The run a source names.
pub async fn resolve(store: &Store, source: &Source) -> Result<Uuid, TrainerError> {
    match source {
        Source::Run(id) => Ok(*id),
        Source::Dataset(name) => match store.incremental().latest_completed_run(name).await? {
            Some(run) => Ok(run.id),
            None => Err(reasonrec_store::StoreError::NotFound(format!("no completed run of dataset {name:?}")).into()),
        },
        Source::Snapshot(name) => Ok(store.lifecycle().snapshot_run(name).await?),
    }
}

/// Waits until the run is completed (marking it so once no task is left to do, as the
/// coordinator would) and returns its state; an error if it was cancelled.
pub async fn wait_for_run(
    store: &Store,
    run_id: Uuid,
    poll: Duration,
    progress: &mut impl FnMut(Progress),
) -> Result<RunState, TrainerError> {
    loop {
        let state = store.runs().refresh_state(run_id).await?;
        match state {
            RunState::Completed => return Ok(state),
            RunState::Cancelled => return Err(TrainerError::RunCancelled(run_id)),
            _ => {
                let counts = store.exports().counts(run_id).await?;
                progress(Progress::Waiting { state, counts });
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// One task ready to become an example (its history cut to what the teacher saw).
struct Pending {
    task: ExportTask,
    reasoning: String,
}

/// Items kept between pages, at most: popular items recur on every page, and a catalogue of this
/// size is read once instead of once per page. Past it the cache starts over.
pub const ITEM_CACHE: usize = 20_000;

/// What the examples are rendered from: items and their profiles (cached across pages, bounded
/// by [`ITEM_CACHE`]) and the user profiles of the current page.
struct Lookups {
    run_id: Uuid,
    dataset_id: i64,
    data: PageData,
    /// Profiles the audit marks let into an example (the others are left out of it).
    policy: AuditPolicy,
    profiles_left_out: u64,
}

impl Lookups {
    fn new(run_id: Uuid, dataset_id: i64, policy: AuditPolicy) -> Self {
        Self { run_id, dataset_id, data: PageData::default(), policy, profiles_left_out: 0 }
    }

    /// Reads what the page's tasks mention and the cache lacks: three queries at most.
    async fn load(&mut self, store: &Store, page: &[Pending]) -> Result<&mut PageData, TrainerError> {
        let mut users: Vec<i32> = page.iter().map(|p| p.task.user_id).collect();
        users.sort_unstable();
        users.dedup();
        let mut items: Vec<i32> = page
            .iter()
            .flat_map(|p| p.task.input.history.iter().map(|h| h.item).chain([p.task.input.target]))
            .collect();
        items.sort_unstable();
        items.dedup();
        let mut missing: Vec<i32> = items.iter().copied().filter(|i| !self.data.items.contains_key(i)).collect();
        if self.data.items.len() + missing.len() > ITEM_CACHE {
            self.data.clear_items();
            missing = items;
        }
        let (user_profiles, left_out) = store.exports().user_profiles(self.run_id, &users, self.policy).await?;
        self.data.user_profiles = user_profiles;
        self.profiles_left_out += left_out;
        if !missing.is_empty() {
            self.data.items.extend(store.tasks().load_items(self.dataset_id, &missing).await?);
            let (item_profiles, left_out) = store.exports().item_profiles(self.run_id, &missing, self.policy).await?;
            self.data.item_profiles.extend(item_profiles);
            self.profiles_left_out += left_out;
        }
        Ok(&mut self.data)
    }
}

fn examples(
    prompts: &PromptLibrary,
    family: &str,
    page: &[Pending],
    data: &mut PageData,
) -> Result<Vec<StudentExample>, TrainerError> {
    page.iter().map(|p| build_example(prompts, family, &p.task, &p.reasoning, data)).collect()
}

/// The task's file, in [`Split::ALL`] order.
fn split_index(task: &ExportTask) -> usize {
    match task.split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    }
}

/// Exports the run's done reasoning tasks to `opts.out` and writes the manifest (see the module
/// doc). Without `opts.partial` it first waits for the run to complete.
pub async fn export_run(
    store: &Store,
    prompts: &PromptLibrary,
    run_id: Uuid,
    opts: &ExportOptions,
    progress: &mut impl FnMut(Progress),
) -> Result<Manifest, TrainerError> {
    let run = store.runs().get(run_id).await?;
    if let Some(at) = run.pruned_at {
        return Err(reasonrec_store::StoreError::NotFound(format!(
            "run {run_id} was pruned at {at} (retention deleted its tasks); export a kept run or snapshot"
        ))
        .into());
    }
    let dataset = store.datasets().by_id(run.dataset_id).await?;
    let state = match opts.partial {
        true => store.runs().refresh_state(run_id).await?,
        false => wait_for_run(store, run_id, opts.poll, progress).await?,
    };
    let family = dataset.family.as_str();
    let student_name = prompts.kind_template_name(STUDENT_KIND, family)?;
    let student_version = prompts.version_of(&student_name).unwrap_or_default().to_string();
    clear_out_dir(&opts.out)?;
    let (mut files, mut tally) = write_examples(store, prompts, run_id, dataset.id, family, opts, progress).await?;
    let draw = fewshot::draw(&tally.train_rows, &opts.few_shot, opts.seed);
    drop(std::mem::take(&mut tally.train_rows));
    files.extend(write_few_shot(store, prompts, run_id, dataset.id, family, &draw, opts).await?);
    let c = store.exports().counts(run_id).await?;
    let report = tally.filters.report();
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        run: RunInfo {
            id: run_id.to_string(),
            complete: state == RunState::Completed,
            state: state.to_string(),
            snapshot: opts.snapshot.clone(),
        },
        dataset: DatasetInfo {
            name: dataset.name.clone(),
            version: dataset.version,
            family: dataset.family.to_string(),
            content_hash: dataset.content_hash.clone(),
        },
        tasks: TaskCounts {
            total: c.tasks,
            done: c.done,
            reasoning: c.reasoning,
            reasoning_done: c.reasoning_done,
            reasoning_failed: c.reasoning_failed,
            exported: report.rows_kept,
        },
        templates: Templates {
            teacher: tally.provenance.templates(),
            student: TemplateInfo { name: student_name, version: student_version },
        },
        teachers: tally.provenance.teachers(),
        splits: Splits { train: tally.counts[0], validation: tally.counts[1], test: tally.counts[2] },
        few_shot: draw.sets.clone(),
        filters: report,
        audit: tally.audit,
        options: ExportOptionsInfo {
            format: opts.format,
            partial: opts.partial,
            seed: opts.seed,
            filters: opts.filters.clone(),
        },
        files,
    };
    write_manifest(&opts.out, &manifest)?;
    // Retention keeps a run an export manifest names.
    store.pruning().record_export(run_id, &opts.out.display().to_string()).await?;
    Ok(manifest)
}

/// Creates `out`, without the manifest an earlier export left there: a manifest must never
/// describe the files being rewritten.
fn clear_out_dir(out: &Path) -> Result<(), TrainerError> {
    std::fs::create_dir_all(out).map_err(|e| TrainerError::io(out, e))?;
    let manifest_path = out.join(MANIFEST_FILE);
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainerError::io(&manifest_path, e)),
    }
}

/// What the pass over the run's pages gathers for the manifest and the few-shot draw.
struct Tally {
    filters: Filters,
    audit: AuditCounts,
    provenance: Provenance,
    /// Per split, in [`Split::ALL`] order.
    counts: [LabelCounts; 3],
    /// (id, label) of the kept training rows.
    train_rows: Vec<(Uuid, bool)>,
}

impl Tally {
    /// The page's tasks the audit marks and the filters let through, ready to render.
    fn admit(&mut self, tasks: Vec<ExportTask>) -> Vec<Pending> {
        let mut page = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            if !self.audit.admit(task.audit) {
                continue;
            }
            let reasoning = extract_reasoning(&task.text).to_string();
            if !self.filters.keep(&reasoning, task.label, task.judge_score) {
                continue;
            }
            cut_to_seen_history(&mut task);
            page.push(Pending { task, reasoning });
        }
        page
    }

    /// Counts the rendered page and sorts its rows by split.
    fn sort(&mut self, page: &[Pending], rows: Vec<StudentExample>) -> Result<Vec<Vec<StudentExample>>, TrainerError> {
        let mut by_split: Vec<Vec<StudentExample>> = vec![Vec::new(); Split::ALL.len()];
        for (p, row) in page.iter().zip(rows) {
            let split = split_index(&p.task);
            by_split[split].push(row);
            self.counts[split].add(p.task.label);
            if split == 0 {
                self.train_rows.push((p.task.id, p.task.label));
            }
            self.provenance.add(&p.task.template, &p.task.template_version, &p.task.model, &p.task.params);
        }
        Ok(by_split)
    }
}

/// The pass over the run's done reasoning tasks: each page read (the next one while this one
/// renders), filtered, rendered and handed to the writer thread. Returns the split files.
async fn write_examples(
    store: &Store,
    prompts: &PromptLibrary,
    run_id: Uuid,
    dataset_id: i64,
    family: &str,
    opts: &ExportOptions,
    progress: &mut impl FnMut(Progress),
) -> Result<(Vec<FileEntry>, Tally), TrainerError> {
    let sinks = Split::ALL
        .iter()
        .map(|s| ExampleSink::create(&opts.out, s.as_str(), opts.format))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sinks = BackgroundSinks::spawn(sinks)?;
    let mut tally = Tally {
        filters: Filters::new(opts.filters.clone()),
        audit: AuditCounts::new(opts.audit),
        provenance: Provenance::default(),
        counts: [LabelCounts::default(); 3],
        train_rows: Vec::new(),
    };
    let page_size = opts.page_size.max(1);
    let mut lookups = Lookups::new(run_id, dataset_id, opts.audit);
    let judged = opts.filters.min_judge_score.is_some();
    // The next page is read while this one is rendered (and the one before written).
    let read = |after: Uuid| {
        let store = store.clone();
        tokio::spawn(async move { store.exports().page(run_id, dataset_id, after, page_size as i64, judged).await })
    };
    let mut next = read(Uuid::nil());
    loop {
        let tasks = next.await.map_err(|e| TrainerError::Invalid(format!("the export read stopped: {e}")))??;
        let Some(last) = tasks.last() else { break };
        next = read(last.id);
        let page = tally.admit(tasks);
        let data = lookups.load(store, &page).await?;
        let rows = examples(prompts, family, &page, data)?;
        sinks.send(tally.sort(&page, rows)?)?;
        let report = tally.filters.report();
        progress(Progress::Exported { read: report.rows_read, kept: report.rows_kept });
    }
    tally.audit.profiles_left_out = lookups.profiles_left_out;
    Ok((sinks.finish()?, tally))
}

/// Reads the drawn rows again by id (in id order, a page at a time) and writes each into every
/// few-shot set that holds it.
async fn write_few_shot(
    store: &Store,
    prompts: &PromptLibrary,
    run_id: Uuid,
    dataset_id: i64,
    family: &str,
    draw: &fewshot::FewShotDraw,
    opts: &ExportOptions,
) -> Result<Vec<FileEntry>, TrainerError> {
    let mut sinks = draw
        .sets
        .iter()
        .map(|s| ExampleSink::create(&opts.out, &format!("fewshot_{}", s.requested), opts.format))
        .collect::<Result<Vec<_>, _>>()?;
    let ids = draw.ids();
    let mut lookups = Lookups::new(run_id, dataset_id, opts.audit);
    for chunk in ids.chunks(opts.page_size.max(1)) {
        let tasks = store.exports().tasks_by_id(run_id, dataset_id, chunk).await?;
        if tasks.len() != chunk.len() {
            return Err(TrainerError::Invalid(format!(
                "few-shot rows changed during the export: {} of {} found again",
                tasks.len(),
                chunk.len()
            )));
        }
        let mut page = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            let reasoning = extract_reasoning(&task.text).to_string();
            cut_to_seen_history(&mut task);
            page.push(Pending { task, reasoning });
        }
        let data = lookups.load(store, &page).await?;
        let rows = examples(prompts, family, &page, data)?;
        for (set, sink) in sinks.iter_mut().enumerate() {
            let members: Vec<&StudentExample> = page
                .iter()
                .zip(&rows)
                .filter(|(p, _)| draw.first_set.get(&p.task.id).is_some_and(|&first| first <= set))
                .map(|(_, row)| row)
                .collect();
            sink.write(&members)?;
        }
    }
    let mut files = Vec::new();
    for sink in sinks {
        files.extend(sink.finish()?);
    }
    Ok(files)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), TrainerError> {
    let mut text = serde_json::to_string_pretty(manifest)
        .map_err(|e| TrainerError::Invalid(format!("cannot serialise the manifest: {e}")))?;
    text.push('\n');
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&tmp, text).map_err(|e| TrainerError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainerError::io(&path, e))
}

/// The student example of one done reasoning task exactly as `train export` (default policy)
/// writes it: the same reads, history cut and rendering as an export page of one row. A task
/// whose output is rejected has none (the export leaves it out).
pub async fn student_example(
    store: &Store,
    prompts: &PromptLibrary,
    task_id: Uuid,
) -> Result<StudentExample, TrainerError> {
    let not_exported = |why: &str| TrainerError::Invalid(format!("task {task_id} is not exported: {why}"));
    let task = store.tasks().load_tasks(&[task_id]).await?.pop().ok_or_else(|| not_exported("no such task"))?;
    let dataset = store.datasets().by_id(task.dataset_id).await?;
    let mut rows = store.exports().tasks_by_id(task.run_id, dataset.id, &[task_id]).await?;
    let Some(mut row) = rows.pop() else { return Err(not_exported("not a done reasoning task")) };
    let policy = AuditPolicy::default();
    if !policy.admits(row.audit) {
        return Err(not_exported("its output is rejected"));
    }
    let reasoning = extract_reasoning(&row.text).to_string();
    cut_to_seen_history(&mut row);
    let page = [Pending { task: row, reasoning }];
    let mut lookups = Lookups::new(task.run_id, dataset.id, policy);
    let data = lookups.load(store, &page).await?;
    let mut rows = examples(prompts, dataset.family.as_str(), &page, data)?;
    rows.pop().ok_or_else(|| not_exported("nothing rendered"))
}

/// [`student_example`] as the corpus browser calls it: a [`reasonrec_core::task_view::TaskView`].
pub fn student_viewer(store: Store, prompts_dir: &Path) -> Result<reasonrec_core::task_view::TaskView, TrainerError> {
    let prompts = std::sync::Arc::new(PromptLibrary::load(prompts_dir)?);
    Ok(reasonrec_core::task_view::task_view(move |task| {
        let (store, prompts) = (store.clone(), prompts.clone());
        async move { student_example(&store, &prompts, task).await }
    }))
}
