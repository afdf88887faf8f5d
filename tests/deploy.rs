//! The deployment files cannot run here (no Docker, no cluster), so they
//! are checked for what breaks deployments: every service, port, volume,
//! file and environment variable they reference exists, every command is a
//! real `strata` subcommand, and the cluster's strata.toml defines the same
//! metrics as the repository's.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize as _;
use serde_yaml::Value as Yaml;
use support::repo;

fn yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value =
                Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // Resolve `<<: *anchor` merges the way Compose does.
            let mut value = value;
            value.apply_merge().unwrap();
            value
        })
        .collect()
}

fn str_of(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Environment variables Strata reads: the config overrides plus the
/// AWS credentials and the logging variables.
fn known_env() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = strata_schemas::config::ENV_OVERRIDES
        .iter()
        .map(|(name, _, _)| (*name).to_string())
        .collect();
    for extra in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "RUST_LOG",
        "STRATA_CONFIG",
        "STRATA_LOG_FORMAT",
    ] {
        names.insert(extra.to_string());
    }
    names
}

/// Checks `args` (without global flags) starts with a real subcommand.
fn assert_subcommand(args: &[String], context: &str) {
    let mut rest: Vec<&str> = args.iter().map(String::as_str).collect();
    // Drop global flags with their values.
    while let Some(first) = rest.first() {
        if *first == "--config" || *first == "--log-format" {
            rest.drain(..2);
        } else {
            break;
        }
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.args(rest.iter().take_while(|a| !a.starts_with("--")))
        .arg("--help");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{context}: `strata {}` is not a command: {}",
        rest.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_file_references_only_what_exists() {
    let dir = repo().join("deploy");
    let docs = yaml(&dir.join("docker-compose.yml"));
    let compose = &docs[0];
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for wanted in [
        "kafka",
        "clickhouse",
        "minio",
        "grafana",
        "prometheus",
        "speed-1",
        "speed-2",
        "archive",
        "batch",
        "serve",
    ] {
        assert!(names.contains(wanted), "service {wanted} is missing");
    }
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(str_of)
        .collect();
    let known = known_env();
    let mut host_ports = BTreeMap::new();
    let mut strata_services = 0;
    for (name, service) in services {
        let name = str_of(name);
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name}: image or build"
        );
        if let Some(build) = service.get("build") {
            let context = dir.join(str_of(&build["context"]));
            assert!(
                context.join(str_of(&build["dockerfile"])).exists(),
                "{name}: Dockerfile"
            );
        }
        if let Some(deps) = service.get("depends_on") {
            let deps: Vec<String> = match deps {
                Yaml::Sequence(s) => s.iter().map(str_of).collect(),
                Yaml::Mapping(m) => m.keys().map(str_of).collect(),
                _ => panic!("{name}: depends_on"),
            };
            for d in deps {
                assert!(names.contains(&d), "{name} depends on unknown service {d}");
            }
        }
        for v in service
            .get("volumes")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let spec = str_of(v);
            let source = spec.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    dir.join(source).exists(),
                    "{name}: bind mount {source} does not exist"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        for p in service
            .get("ports")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let host = str_of(p).split(':').next().unwrap().to_string();
            if let Some(other) = host_ports.insert(host.clone(), name.clone()) {
                panic!("host port {host} used by {other} and {name}");
            }
        }
        let image = service.get("image").map(str_of).unwrap_or_default();
        if image == "strata:local" {
            strata_services += 1;
            let env = service["environment"].as_mapping().unwrap();
            for k in env.keys().map(str_of) {
                assert!(known.contains(&k), "{name}: Strata does not read {k}");
            }
            let command: Vec<String> = service["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(str_of)
                .collect();
            assert_subcommand(&command, &name);
        }
    }
    assert!(
        strata_services >= 6,
        "init, two speed, archive, batch, serve"
    );
    // Prometheus scrapes the services on the ports they listen on.
    let prom = yaml(&dir.join("prometheus/prometheus.yml"));
    let env = services["speed-1"]["environment"].as_mapping().unwrap();
    let listen = |key: &str| {
        str_of(&env[&Yaml::from(key)])
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    let ports = BTreeMap::from([
        ("speed-1", listen("STRATA_SPEED_METRICS_LISTEN")),
        ("speed-2", listen("STRATA_SPEED_METRICS_LISTEN")),
        ("archive", listen("STRATA_ARCHIVE_METRICS_LISTEN")),
        ("batch", listen("STRATA_BATCH_METRICS_LISTEN")),
        ("serve", listen("STRATA_SERVING_LISTEN")),
    ]);
    let mut scraped = 0;
    for job in prom[0]["scrape_configs"].as_sequence().unwrap() {
        for sc in job["static_configs"].as_sequence().unwrap() {
            for t in sc["targets"].as_sequence().unwrap() {
                let t = str_of(t);
                let (host, port) = t.split_once(':').unwrap();
                assert!(
                    names.contains(host),
                    "prometheus target {t}: no such service"
                );
                assert_eq!(
                    ports.get(host),
                    Some(&port.to_string()),
                    "prometheus target {t}: wrong port"
                );
                scraped += 1;
            }
        }
    }
    assert_eq!(scraped, 5);
    // Grafana mounts the provisioning this repository tests.
    let grafana: Vec<String> = services["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        grafana
            .iter()
            .any(|v| v.starts_with("./grafana/provisioning:"))
    );
    assert!(
        grafana
            .iter()
            .any(|v| v.starts_with("./grafana/dashboards:/var/lib/grafana/dashboards"))
    );
}

#[test]
fn dockerfile_copies_what_exists() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(
        text.contains("FROM rust:") && text.contains("FROM debian:"),
        "multi-stage"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo().join(source).exists(), "{line}");
    }
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let dir = repo().join("deploy/k8s");
    let kustomization = &yaml(&dir.join("kustomization.yaml"))[0];
    let mut objects = Vec::new();
    for r in kustomization["resources"].as_sequence().unwrap() {
        let file = dir.join(str_of(r));
        assert!(file.exists(), "{}", file.display());
        objects.extend(yaml(&file));
    }
    let by_kind = |kind: &str| -> Vec<&Yaml> {
        objects
            .iter()
            .filter(|o| str_of(&o["kind"]) == kind)
            .collect()
    };
    let config_maps: BTreeSet<String> = by_kind("ConfigMap")
        .iter()
        .map(|o| str_of(&o["metadata"]["name"]))
        .collect();
    let secrets: BTreeSet<String> = by_kind("Secret")
        .iter()
        .map(|o| str_of(&o["metadata"]["name"]))
        .collect();
    let known = known_env();
    for secret in by_kind("Secret") {
        for k in secret["stringData"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(str_of)
        {
            assert!(
                known.contains(&k),
                "secret key {k} is not an environment variable Strata reads"
            );
        }
    }
    let mut components = BTreeMap::new();
    for workload in by_kind("Deployment").into_iter().chain(by_kind("Job")) {
        let name = str_of(&workload["metadata"]["name"]);
        let spec = &workload["spec"]["template"]["spec"];
        for c in spec["containers"].as_sequence().unwrap() {
            assert_eq!(
                str_of(&c["image"]),
                "strata",
                "{name}: image (set by the kustomization)"
            );
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(str_of)
                .collect();
            assert_subcommand(&args, &name);
            assert_eq!(args[1], "/etc/strata/config/strata.toml");
            for e in c
                .get("envFrom")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                assert!(
                    secrets.contains(&str_of(&e["secretRef"]["name"])),
                    "{name}: secret"
                );
            }
            for m in c["volumeMounts"].as_sequence().unwrap() {
                assert_eq!(str_of(&m["mountPath"]), "/etc/strata/config");
            }
            if name == "strata-serve" {
                assert_eq!(str_of(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
                assert_eq!(str_of(&c["livenessProbe"]["httpGet"]["path"]), "/healthz");
            }
        }
        for v in spec["volumes"].as_sequence().unwrap() {
            assert!(
                config_maps.contains(&str_of(&v["configMap"]["name"])),
                "{name}: config map"
            );
        }
        if str_of(&workload["kind"]) == "Deployment" {
            let labels = workload["spec"]["template"]["metadata"]["labels"].clone();
            assert_eq!(
                workload["spec"]["selector"]["matchLabels"], labels,
                "{name}: selector"
            );
            components.insert(
                name,
                (workload["spec"]["replicas"].as_u64().unwrap(), labels),
            );
        }
    }
    for required in [
        "strata-speed",
        "strata-archive",
        "strata-batch",
        "strata-serve",
    ] {
        assert!(components.contains_key(required), "{required}");
    }
    assert!(
        components["strata-speed"].0 <= 4,
        "speed replicas ≤ partitions"
    );
    assert_eq!(components["strata-batch"].0, 1, "one scheduler");
    let service = by_kind("Service")[0];
    assert_eq!(
        service["spec"]["selector"], components["strata-serve"].1,
        "the Service selects the API pods"
    );

    // The cluster's strata.toml is valid and defines the same metrics.
    let cm = by_kind("ConfigMap")[0];
    let text = str_of(&cm["data"]["strata.toml"]);
    let local = text.replace(
        "dir = \"/etc/strata/schemas/contracts\"",
        &format!(
            "dir = {:?}",
            repo().join("schemas/contracts").display().to_string()
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("strata.toml"), &local).unwrap();
    strata_schemas::config::load_with_env(&tmp.path().join("strata.toml"), |_| None)
        .unwrap_or_else(|p| panic!("the ConfigMap's strata.toml is invalid: {p}"));
    let cluster: toml::Table = text.parse().unwrap();
    let reference: toml::Table = std::fs::read_to_string(repo().join("strata.toml"))
        .unwrap()
        .parse()
        .unwrap();
    for section in ["metrics", "sources"] {
        assert_eq!(
            cluster[section], reference[section],
            "[{section}] must match the repository's strata.toml"
        );
    }
}

/// Every `--flag` in `args` is one the subcommand's `--help` lists.
fn assert_flags_exist(args: &[String], context: &str) {
    let all: Vec<&str> = args.iter().map(String::as_str).collect();
    // Global flags come first, with their values.
    let mut rest = all.as_slice();
    while let Some(first) = rest.first() {
        if *first == "--config" || *first == "--log-format" {
            rest = &rest[2..];
        } else {
            break;
        }
    }
    let subcommand: Vec<&str> = rest
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .copied()
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(&subcommand)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in rest.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{context}: `strata {}` has no flag {flag}:\n{help}",
            subcommand.join(" ")
        );
    }
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing in {args:?}"));
    &args[at + 1]
}

#[test]
fn batch_backfill_job_splits_one_plan_over_an_indexed_job() {
    let dir = repo().join("deploy/k8s");
    let objects = yaml(&dir.join("batch-backfill-job.yaml"));
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(
        !kustomization.contains("batch-backfill-job.yaml"),
        "a one-off Job is applied by hand, not with every `kubectl apply -k`"
    );
    let config_maps: BTreeSet<String> = yaml(&dir.join("configmap.yaml"))
        .iter()
        .map(|o| str_of(&o["metadata"]["name"]))
        .collect();
    let mut known = known_env();
    known.insert("STRATA_PLAN_KEY".into());
    known.insert("JOB_COMPLETION_INDEX".into());
    let args_of = |c: &Yaml| -> Vec<String> {
        c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(str_of)
            .collect()
    };
    let env_of = |c: &Yaml| -> BTreeMap<String, Yaml> {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| (str_of(&e["name"]), e.clone()))
            .collect()
    };
    assert_eq!(objects.len(), 2, "the chunks Job and the publisher Job");
    let (chunks, publisher) = (&objects[0], &objects[1]);
    for job in [chunks, publisher] {
        assert_eq!(str_of(&job["kind"]), "Job");
        let spec = &job["spec"]["template"]["spec"];
        for v in spec["volumes"].as_sequence().unwrap() {
            assert!(config_maps.contains(&str_of(&v["configMap"]["name"])));
        }
        let containers = spec["containers"].as_sequence().unwrap().iter();
        let init = spec
            .get("initContainers")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten();
        for c in containers.chain(init) {
            assert_eq!(str_of(&c["image"]), "strata");
            let args = args_of(c);
            assert_eq!(args[1], "/etc/strata/config/strata.toml");
            assert_subcommand(&args, &str_of(&c["name"]));
            assert_flags_exist(&args, &str_of(&c["name"]));
            for name in env_of(c).keys() {
                assert!(known.contains(name), "Strata does not read {name}");
            }
        }
    }
    // The Indexed Job: N completions, pod i computes chunk i of N.
    let spec = &chunks["spec"];
    assert_eq!(str_of(&spec["completionMode"]), "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    let parallelism = spec["parallelism"].as_u64().unwrap();
    assert!(parallelism >= 1 && parallelism <= completions);
    let pod = &spec["template"]["spec"];
    assert_eq!(str_of(&pod["restartPolicy"]), "Never");
    let chunk = &pod["containers"][0];
    let args = args_of(chunk);
    assert!(args.windows(2).any(|w| w == ["batch", "chunk"]), "{args:?}");
    assert_eq!(flag_value(&args, "--index"), "$(JOB_COMPLETION_INDEX)");
    assert_eq!(flag_value(&args, "--of"), completions.to_string());
    let env = env_of(chunk);
    assert_eq!(
        str_of(&env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]),
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    // Every pod plans (idempotent by key) before it computes its chunk.
    let plan = &pod["initContainers"][0];
    let plan_args = args_of(plan);
    assert!(plan_args.windows(2).any(|w| w == ["batch", "plan"]));
    assert_eq!(flag_value(&plan_args, "--chunks"), completions.to_string());
    let metric = flag_value(&args, "--metric");
    assert_eq!(flag_value(&plan_args, "--metric"), metric);
    // The publisher commits the same plan.
    let publish = &publisher["spec"]["template"]["spec"]["containers"][0];
    let publish_args = args_of(publish);
    assert!(publish_args.windows(2).any(|w| w == ["batch", "publish"]));
    assert_eq!(flag_value(&publish_args, "--metric"), metric);
    let key = |c: &Yaml| str_of(&env_of(c)["STRATA_PLAN_KEY"]["value"]);
    assert!(!key(plan).is_empty());
    assert_eq!(key(plan), key(chunk), "pods agree on the plan");
    assert_eq!(key(plan), key(publish), "the publisher commits that plan");
    // The metric exists in the cluster's configuration.
    let cm = &yaml(&dir.join("configmap.yaml"))[0];
    let cluster: toml::Table = str_of(&cm["data"]["strata.toml"]).parse().unwrap();
    assert!(
        cluster["metrics"].as_table().unwrap().contains_key(metric),
        "{metric} is not a metric of the ConfigMap"
    );
}
