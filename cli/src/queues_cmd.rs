//! `remora queues ls`: the operator's active queue splits, for people (a
//! table) and tools (`--json`, the protocol's `SplitInfo` as JSON).

use crate::args::QueuesCommand;
use crate::error::{Error, Result};
use crate::session_cmd::ask_operator;
use remora_protocol::queues::{QueueReply, QueueRequest, SplitInfo};
use remora_protocol::{Request, Response};

pub fn run(command: QueuesCommand) -> Result<i32> {
    match command {
        QueuesCommand::Ls { operator, json } => {
            let splits = match ask_operator(&operator, Request::Queues(QueueRequest::List))? {
                Response::Queues(QueueReply::List(splits)) => splits,
                other => {
                    return Err(Error::OperatorSession {
                        operator,
                        reason: format!("unexpected reply {other:?}"),
                    });
                }
            };
            if json {
                let text = serde_json::to_string_pretty(&splits)
                    .map_err(|e| Error::Io(format!("printing JSON: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", table(&splits));
            }
            Ok(0)
        }
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// One line per temporary queue, under a line per split queue.
pub fn table(splits: &[SplitInfo]) -> String {
    if splits.is_empty() {
        return "no active queue splits\n".to_owned();
    }
    let mut out = String::new();
    for split in splits {
        for q in &split.queues {
            out.push_str(&format!(
                "{}/{} {} queue {} ({}): original {} holds {}\n",
                split.namespace,
                split.name,
                split.workload,
                q.id,
                q.broker,
                q.original,
                count(q.original_depth)
            ));
            out.push_str(&format!(
                "  {:<12} {:<40} {:>7} {:>8}  {}\n",
                "OWNER", "QUEUE", "DEPTH", "ROUTED", "FILTER"
            ));
            for t in &q.queues {
                out.push_str(&format!(
                    "  {:<12} {:<40} {:>7} {:>8}  {}\n",
                    t.owner,
                    t.queue,
                    count(t.depth),
                    t.routed,
                    t.filter.as_deref().unwrap_or("(the rest)")
                ));
            }
        }
    }
    out
}
