//! Reading BEIR-format datasets: `corpus.jsonl` (`_id`, `title`, `text`),
//! `queries.jsonl` (`_id`, `text`) and `qrels.tsv` (query id, corpus id,
//! graded relevance; one header line).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum BeirError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One corpus document.
#[derive(Clone, Debug, Deserialize)]
pub struct CorpusDoc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub text: String,
}

/// One query.
#[derive(Clone, Debug, Deserialize)]
pub struct Query {
    #[serde(rename = "_id")]
    pub id: String,
    pub text: String,
}

/// Reference answers of a query (`answers.jsonl`: `_id`, `answers`).
#[derive(Clone, Debug, Deserialize)]
pub struct QueryAnswers {
    #[serde(rename = "_id")]
    pub id: String,
    pub answers: Vec<String>,
}

/// Reads `answers.jsonl` of a dataset folder: query id → reference answers.
pub fn load_answers(dir: &Path) -> Result<HashMap<String, Vec<String>>, BeirError> {
    Ok(jsonl::<QueryAnswers>(&dir.join("answers.jsonl"))?
        .into_iter()
        .filter(|a| !a.answers.is_empty())
        .map(|a| (a.id, a.answers))
        .collect())
}

/// Relevance judgements: query id → corpus id → grade (0 = judged not
/// relevant).
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// A dataset in memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub corpus: Vec<CorpusDoc>,
    pub queries: Vec<Query>,
    pub qrels: Qrels,
}

fn read(path: &Path) -> Result<String, BeirError> {
    std::fs::read_to_string(path).map_err(|source| BeirError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, BeirError> {
    read(path)?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| BeirError::Format {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Parses a qrels file: tab-separated `query-id corpus-id score`, the first
/// line a header.
pub fn parse_qrels(text: &str, path: &Path) -> Result<Qrels, BeirError> {
    let mut qrels: Qrels = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let bad = |message: String| BeirError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        if fields.len() < 3 {
            return Err(bad("expected query-id, corpus-id and score".into()));
        }
        let grade: i32 = fields[2]
            .trim()
            .parse()
            .map_err(|_| bad(format!("score {:?} is not an integer", fields[2])))?;
        qrels
            .entry(fields[0].trim().to_string())
            .or_default()
            .insert(fields[1].trim().to_string(), grade);
    }
    Ok(qrels)
}

impl Dataset {
    /// Reads a dataset folder.
    pub fn load(dir: &Path) -> Result<Self, BeirError> {
        let qrels_path = dir.join("qrels.tsv");
        Ok(Self {
            corpus: jsonl(&dir.join("corpus.jsonl"))?,
            queries: jsonl(&dir.join("queries.jsonl"))?,
            qrels: parse_qrels(&read(&qrels_path)?, &qrels_path)?,
        })
    }

    /// A slice for quick runs: the first `max_queries` judged queries, all
    /// documents judged for them, then corpus documents in file order up
    /// to `max_docs` in all. Queries without a relevant document are left
    /// out (they have no defined nDCG).
    pub fn slice(&self, max_docs: Option<usize>, max_queries: Option<usize>) -> Dataset {
        let judged = |q: &Query| {
            self.qrels
                .get(&q.id)
                .is_some_and(|j| j.values().any(|&g| g > 0))
        };
        let queries: Vec<Query> = self
            .queries
            .iter()
            .filter(|q| judged(q))
            .take(max_queries.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let qrels: Qrels = queries
            .iter()
            .map(|q| (q.id.clone(), self.qrels[&q.id].clone()))
            .collect();
        let corpus = match max_docs {
            None => self.corpus.clone(),
            Some(max) => {
                let needed: BTreeMap<&str, ()> = qrels
                    .values()
                    .flat_map(|j| j.keys().map(|d| (d.as_str(), ())))
                    .collect();
                let mut keep: Vec<&CorpusDoc> = self
                    .corpus
                    .iter()
                    .filter(|d| needed.contains_key(d.id.as_str()))
                    .collect();
                for d in &self.corpus {
                    if keep.len() >= max.max(needed.len()) {
                        break;
                    }
                    if !needed.contains_key(d.id.as_str()) {
                        keep.push(d);
                    }
                }
                keep.into_iter().cloned().collect()
            }
        };
        Dataset {
            corpus,
            queries,
            qrels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qrels_are_graded_and_skip_the_header() {
        let q = parse_qrels(
            "query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t0\n2\td3\t1\n",
            Path::new("q"),
        )
        .unwrap();
        assert_eq!(q["1"]["d1"], 2);
        assert_eq!(q["1"]["d2"], 0);
        assert_eq!(q["2"]["d3"], 1);
        assert!(parse_qrels("h\n1\td1\tx\n", Path::new("q")).is_err());
    }

    #[test]
    fn a_slice_keeps_the_judged_documents() {
        let doc = |id: &str| CorpusDoc {
            id: id.into(),
            title: String::new(),
            text: id.into(),
        };
        let query = |id: &str| Query {
            id: id.into(),
            text: id.into(),
        };
        let data = Dataset {
            corpus: ["a", "b", "c", "d", "e"].map(doc).to_vec(),
            queries: ["q1", "q2", "q3"].map(query).to_vec(),
            qrels: parse_qrels("h\nq1\te\t1\nq2\tb\t0\nq3\tc\t1\n", Path::new("q")).unwrap(),
        };
        let s = data.slice(Some(3), Some(1));
        assert_eq!(s.queries.len(), 1);
        assert_eq!(s.queries[0].id, "q1");
        let ids: Vec<&str> = s.corpus.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["e", "a", "b"]);
    }
}
