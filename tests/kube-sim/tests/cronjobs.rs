//! The CronJob controller held to the real kubectl: scheduled Jobs run and complete, the
//! history limit removes old ones, and `kubectl create job --from=cronjob/x` (which POSTs
//! the Job as protobuf) starts one by hand.

mod common;

use std::process::Command;

use common::{Sim, poll};

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "@every 1s"
  successfulJobsHistoryLimit: 100
  jobTemplate:
    metadata: {labels: {cron: tick}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: tick, image: busybox, command: [sh, -c, "echo tick"]}]
"#;

fn jobs(sim: &Sim) -> Vec<String> {
    sim.ok(&["get", "jobs", "-l", "cron=tick", "-o", "name"])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn cronjob_runs_jobs_on_schedule_and_by_hand() {
    let sim = Sim::start();
    sim.apply_yaml(CRONJOB, &[]);
    poll(|| !jobs(&sim).is_empty(), "a first scheduled job");
    let first = jobs(&sim)[0].clone();
    sim.ok(&["wait", "--for=condition=Complete", &first, "--timeout=30s"]);
    assert_eq!(sim.ok(&["logs", &first]), "tick\n");
    poll(
        || {
            !sim.ok(&[
                "get",
                "cronjob",
                "tick",
                "-o",
                "jsonpath={.status.lastSuccessfulTime}",
            ])
            .is_empty()
        },
        "lastSuccessfulTime",
    );
    // Later runs complete too, and the history limit removes the first job. (The limit
    // starts high so the first job cannot vanish before it is looked at above.)
    sim.ok(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"successfulJobsHistoryLimit":1}}"#,
    ]);
    poll(
        || !jobs(&sim).contains(&first),
        "the first job to be removed by the history limit",
    );
    assert!(!jobs(&sim).is_empty(), "newer jobs exist");

    // By hand: kubectl builds the job from the cronjob. (It is owned by the cronjob, so the
    // history limit applies to it too: raised to keep it.)
    sim.ok(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true,"successfulJobsHistoryLimit":3}}"#,
    ]);
    // Straight from kubectl: its typed client POSTs the Job as protobuf.
    sim.ok(&["create", "job", "--from=cronjob/tick", "manual"]);
    sim.ok(&[
        "wait",
        "--for=condition=Complete",
        "job/manual",
        "--timeout=30s",
    ]);
    assert_eq!(sim.ok(&["logs", "job/manual"]), "tick\n");
    let owner = sim.ok(&[
        "get",
        "job",
        "manual",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, "tick");
}

#[test]
fn a_run_later_than_the_starting_deadline_is_missed() {
    let sim = Sim::start();
    // Yearly on January 1st; both were last scheduled two years ago, so this year's run is
    // months late: missed with a 60 s deadline, started without one.
    let cronjob = |name: &str, deadline: &str| {
        format!(
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "0 0 1 1 *"
  suspend: true
  {deadline}
  jobTemplate:
    metadata: {{labels: {{cron: {name}}}}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: c, image: busybox, command: [true]}}]
"#
        )
    };
    sim.apply_yaml(
        &[
            cronjob("strict", "startingDeadlineSeconds: 60"),
            cronjob("lenient", ""),
        ]
        .join("---"),
        &[],
    );
    let year: i32 = String::from_utf8_lossy(
        &Command::new("date")
            .args(["-u", "+%Y"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let long_ago = format!(
        r#"{{"status":{{"lastScheduleTime":"{}-01-01T00:00:00Z"}}}}"#,
        year - 2
    );
    for name in ["strict", "lenient"] {
        sim.ok(&[
            "patch",
            "cronjob",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &long_ago,
        ]);
    }
    // The strict one first: by the time the lenient one's job exists, the controller has
    // looked at the unsuspended strict one at least once.
    for name in ["strict", "lenient"] {
        sim.ok(&[
            "patch",
            "cronjob",
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ]);
    }
    poll(
        || {
            !sim.ok(&["get", "jobs", "-l", "cron=lenient", "-o", "name"])
                .trim()
                .is_empty()
        },
        "the lenient cronjob's late run",
    );
    assert_eq!(
        sim.ok(&["get", "jobs", "-l", "cron=strict", "-o", "name"])
            .trim(),
        "",
        "a run past its starting deadline is missed"
    );
}
