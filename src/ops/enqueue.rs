//! `tagsweep enqueue`: publish jobs from arguments, a file or stdin.
//!
//! Input is JSON lines in the job format, or CSV `account,tag[,tag…]`. The
//! whole input is validated first, with line numbers, and nothing is
//! published while a line is invalid (unless `--skip-invalid`). Then every
//! job goes out with publisher confirms, a bounded window of them in
//! flight, so a million lines stream through at broker speed in flat
//! memory. Every job leaves with a job id (a new UUID where the line has
//! none), so a redelivery is recognised as the same job.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::PathBuf;
use std::time::Instant;

use lapin::Channel;
use lapin::options::ConfirmSelectOptions;

use super::OpsError;
use crate::config::Topology;
use crate::job::{self, Job};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON lines if the first line starts with `{`, else CSV.
    Auto,
    Jsonl,
    Csv,
}

/// Where the jobs come from.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// One job from the command line.
    One { job_id: Option<String>, account: String, tags: Vec<String> },
    /// A file (or `-` for stdin) of jobs, one per line.
    Lines { path: PathBuf, format: Format },
}

#[derive(Debug, Clone)]
pub(crate) struct EnqueueOptions {
    pub input: Input,
    pub skip_invalid: bool,
    /// Publishes awaiting their confirm at once.
    pub confirm_window: usize,
    pub progress: bool,
}

/// A line that is not a valid job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EnqueueReport {
    pub published: u64,
    pub skipped: u64,
    pub bad_lines: Vec<BadLine>,
    pub seconds: f64,
}

/// Reads a JSON line into a job; `None` for a blank line.
fn job_from_json_line(line: &str) -> Option<Result<Job, String>> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(job::parse(trimmed.as_bytes(), None).map_err(|invalid| invalid.reason))
}

/// Splits one CSV line (RFC 4180 quoting: `"b,c"`, `"say ""hi"""`), trimming
/// unquoted space. A job is one line, so a quoted field cannot span lines.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("CSV: a quoted field is not closed".into()),
                }
            }
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            if !matches!(chars.peek(), None | Some(',')) {
                return Err("CSV: text after a closing quote".into());
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                field.push(c);
            }
            field.truncate(field.trim_end().len());
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// Reads a CSV line `account,tag[,tag…]` into a job; `None` for a blank line.
fn job_from_csv_line(line: &str) -> Option<Result<Job, String>> {
    if line.trim().is_empty() {
        return None;
    }
    let fields = match csv_fields(line) {
        Ok(fields) => fields,
        Err(reason) => return Some(Err(reason)),
    };
    let account = fields.first().map(String::as_str).unwrap_or_default();
    let tags: Vec<&str> = fields.iter().skip(1).map(String::as_str).filter(|t| !t.is_empty()).collect();
    let body = serde_json::json!({"account": account, "tags": tags}).to_string();
    Some(job::parse(body.as_bytes(), None).map_err(|invalid| invalid.reason))
}

/// Every job of the input with its line number, or why the line is not one.
fn read_jobs<'a>(
    file: &'a File,
    format: Format,
) -> impl Iterator<Item = Result<(u64, Result<Job, String>), OpsError>> + 'a {
    let parse = match format {
        Format::Csv => job_from_csv_line,
        Format::Jsonl | Format::Auto => job_from_json_line,
    };
    BufReader::with_capacity(1 << 16, file).lines().enumerate().filter_map(move |(index, line)| {
        let line_no = index as u64 + 1;
        match line {
            Err(e) => Some(Err(OpsError::Input(format!("line {line_no}: {e}")))),
            Ok(line) => parse(&line).map(|job| Ok((line_no, job))),
        }
    })
}

/// The body the worker receives: the canonical job, always with its id.
fn body_of(job: &Job) -> Vec<u8> {
    let body = if job.all_tags() {
        serde_json::json!({"job_id": job.id, "account": job.account, "all_tags": true})
    } else {
        serde_json::json!({"job_id": job.id, "account": job.account, "tags": job.tags()})
    };
    body.to_string().into_bytes()
}

/// Opens the input, spooling stdin to a temporary file so it can be read twice.
fn open(path: &PathBuf) -> Result<File, OpsError> {
    if path.as_os_str() == "-" {
        let mut spool = tempfile::tempfile()?;
        std::io::copy(&mut std::io::stdin().lock(), &mut spool)?;
        spool.rewind()?;
        Ok(spool)
    } else {
        File::open(path).map_err(|e| OpsError::Input(format!("cannot read {}: {e}", path.display())))
    }
}

fn detect(file: &mut File, format: Format) -> Result<Format, OpsError> {
    if format != Format::Auto {
        return Ok(format);
    }
    let mut head = [0u8; 4096];
    let n = file.read(&mut head)?;
    file.rewind()?;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace());
    Ok(if first == Some(&b'{') { Format::Jsonl } else { Format::Csv })
}

/// First pass: counts valid lines and lists the bad ones.
fn validate(file: &File, format: Format) -> Result<(u64, Vec<BadLine>), OpsError> {
    let mut valid = 0;
    let mut bad = Vec::new();
    for item in read_jobs(file, format) {
        match item? {
            (_, Ok(_)) => valid += 1,
            (line, Err(reason)) => bad.push(BadLine { line, reason }),
        }
    }
    Ok((valid, bad))
}

/// Validates, then publishes. With invalid lines and no `skip_invalid`,
/// returns an `Input` error listing them and publishes nothing.
pub(crate) async fn enqueue(
    connection: &lapin::Connection,
    topology: &Topology,
    options: EnqueueOptions,
) -> Result<EnqueueReport, OpsError> {
    let started = Instant::now();
    let channel = connection.create_channel().await?;
    let result = publish_all(&channel, topology, options).await;
    let _ = channel.close(200, "enqueued".into()).await;
    let mut report = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn publish_all(
    channel: &Channel,
    topology: &Topology,
    options: EnqueueOptions,
) -> Result<EnqueueReport, OpsError> {
    crate::queue::declare(channel, topology).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut publisher = crate::queue::JobPublisher::new(channel, topology, options.confirm_window);
    let mut report = EnqueueReport::default();

    match options.input {
        Input::One { job_id, account, tags } => {
            let body = serde_json::json!({"job_id": job_id, "account": account, "tags": tags}).to_string();
            let job = job::parse(body.as_bytes(), None).map_err(|invalid| OpsError::Input(invalid.reason))?;
            publisher.publish(&body_of(&job), &job.id).await?;
            report.published = 1;
        }
        Input::Lines { path, format } => {
            let mut file = open(&path)?;
            let format = detect(&mut file, format)?;
            let (valid, bad) = validate(&file, format)?;
            if !bad.is_empty() && !options.skip_invalid {
                let shown: Vec<String> =
                    bad.iter().take(20).map(|b| format!("  line {}: {}", b.line, b.reason)).collect();
                let more = if bad.len() > 20 { format!("\n  … and {} more", bad.len() - 20) } else { String::new() };
                return Err(OpsError::Input(format!(
                    "{} invalid line(s); nothing was published (fix them, or pass --skip-invalid):\n{}{more}",
                    bad.len(),
                    shown.join("\n")
                )));
            }
            report.skipped = bad.len() as u64;
            report.bad_lines = bad;
            file.rewind()?;
            let bar = progress_bar(valid, options.progress);
            for item in read_jobs(&file, format) {
                if let (_, Ok(job)) = item? {
                    publisher.publish(&body_of(&job), &job.id).await?;
                    report.published += 1;
                    bar.inc(1);
                }
            }
            publisher.finish().await?;
            bar.finish_and_clear();
        }
    }
    publisher.finish().await?;
    Ok(report)
}

pub(crate) fn progress_bar(total: u64, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_both_formats() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"u1,a\n\nu2, a,\"b,c\"\nu-only\n").unwrap();
        file.rewind().unwrap();
        let jobs: Vec<(u64, Result<Job, String>)> = read_jobs(&file, Format::Csv).map(Result::unwrap).collect();
        assert_eq!(csv_fields(r#"a, "say ""hi""" ,c"#).unwrap(), ["a", "say \"hi\"", "c"]);
        assert!(csv_fields(r#"a,"open"#).is_err());
        assert_eq!(jobs.len(), 3, "the blank line is skipped");
        assert_eq!(jobs[1].0, 3, "line numbers count blank lines");
        assert_eq!(jobs[1].1.as_ref().unwrap().tags(), ["a", "b,c"]);
        assert_eq!(jobs[2].0, 4);
        assert!(jobs[2].1.as_ref().unwrap_err().contains("at least one tag"));

        let job = job_from_json_line(r#"{"job_id": "j", "account": "u", "tags": ["a"]}"#).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.account.as_str()), ("j", "u"));
        assert!(job_from_json_line("   ").is_none());
        // A line without an id leaves with a fresh one.
        let job = job_from_json_line(r#"{"account": "u3", "tags": ["a"]}"#).unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body_of(&job)).unwrap();
        assert_eq!(body["job_id"], job.id.as_str());
    }
}
