//! `deploy/`: the Kubernetes manifests parse and agree with each other and
//! with the image (config path, state store, probe port, secrets), the config
//! they mount passes `validate`, the systemd unit has the settings that keep
//! it safe, and (where `podman` is installed) the Containerfile's final
//! stage builds on a base image assembled here from the binary's shared
//! libraries, with no registry, and the image runs `--help`, `validate` on
//! the mounted config and the agent itself as its non-root user.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_norway::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of every file under `deploy/kubernetes/`, by kind.
fn manifests() -> BTreeMap<String, Value> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut by_kind = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", file.display()))
                .to_string();
            assert!(
                by_kind.insert(kind.clone(), value).is_none(),
                "two documents of kind {kind}"
            );
        }
    }
    by_kind
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq_of<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

/// The agent's config in the ConfigMap, and the file name it is mounted as.
fn configmap_config(m: &BTreeMap<String, Value>) -> (String, String) {
    let data = m["ConfigMap"]["data"].as_mapping().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "one config file in the ConfigMap");
    let (key, text) = data.iter().next().unwrap();
    (
        str_of(key, "ConfigMap key").to_string(),
        str_of(text, "ConfigMap value").to_string(),
    )
}

/// The Secret's variables with their (placeholder) values.
fn secret_vars(m: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    let secret = &m["Secret"];
    let mut vars = BTreeMap::new();
    if let Some(map) = secret["stringData"].as_mapping() {
        for (k, v) in map {
            vars.insert(
                str_of(k, "Secret key").into(),
                str_of(v, "Secret value").into(),
            );
        }
    }
    assert!(
        secret["data"].is_null(),
        "keep the example Secret in stringData (readable placeholders)"
    );
    vars
}

/// Variables the config references, split into those it requires (no
/// default) and all of them, with the syntax of `src/config/vars.rs`.
fn config_vars(config: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let re = regex::Regex::new(
        r"\$\$|\$([A-Z_][A-Z0-9_]*)\b|\$\{([A-Za-z_][A-Za-z0-9_.]*)(?:(:?-|:?\?)([^}]*))?\}",
    )
    .unwrap();
    let (mut required, mut all) = (BTreeSet::new(), BTreeSet::new());
    for caps in re.captures_iter(config) {
        let Some(name) = caps.get(1).or_else(|| caps.get(2)) else {
            continue;
        };
        all.insert(name.as_str().to_string());
        if !matches!(caps.get(3).map(|m| m.as_str()), Some("-" | ":-")) {
            required.insert(name.as_str().to_string());
        }
    }
    (required, all)
}

fn the_container(m: &BTreeMap<String, Value>) -> &Value {
    let containers = seq_of(
        &m["Deployment"]["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// `--graceful-shutdown-limit-secs` in `args`, or the agent's default.
fn graceful_limit(args: &[&str]) -> u64 {
    args.iter()
        .position(|a| *a == "--graceful-shutdown-limit-secs")
        .map(|i| args[i + 1].parse().unwrap())
        .unwrap_or(60)
}

/// A Kubernetes memory quantity in MiB (`256Mi`, `1Gi`).
fn mib(q: &str) -> u64 {
    if let Some(n) = q.strip_suffix("Mi") {
        n.parse().unwrap()
    } else if let Some(n) = q.strip_suffix("Gi") {
        n.parse::<u64>().unwrap() * 1024
    } else {
        panic!("memory quantity {q:?}: use Mi or Gi")
    }
}

/// The `ENV MONGO_ADLS_CONFIG=` of the Containerfile.
fn image_config_path() -> String {
    let cf = read("deploy/Containerfile");
    let re = regex::Regex::new(r"MONGO_ADLS_CONFIG=(\S+)").unwrap();
    re.captures(&cf)
        .expect("ENV MONGO_ADLS_CONFIG in the Containerfile")[1]
        .to_string()
}

fn validate_no_environment(
    config: &Path,
    env: &BTreeMap<String, String>,
    clear: &BTreeSet<String>,
) -> Output {
    let mut cmd = support::mongo_adls();
    cmd.args(["validate", "--no-environment", "-c"]).arg(config);
    for name in clear {
        cmd.env_remove(name);
    }
    cmd.envs(env);
    cmd.output().unwrap()
}

#[test]
fn kubernetes_config_validates_with_the_secrets_variables() {
    let m = manifests();
    for kind in ["ConfigMap", "Secret", "Deployment"] {
        assert!(m.contains_key(kind), "no {kind} under deploy/kubernetes");
    }
    let (name, config) = configmap_config(&m);
    let secrets = secret_vars(&m);
    let (required, all) = config_vars(&config);
    assert!(
        !required.is_empty(),
        "the config takes its secrets from the environment"
    );

    // Every variable the config requires comes from the container's
    // environment: its env list or the Secret it imports.
    let container = the_container(&m);
    let mut provided: BTreeSet<String> = BTreeSet::new();
    if let Some(env) = container["env"].as_sequence() {
        for e in env {
            provided.insert(str_of(&e["name"], "env name").into());
        }
    }
    let secret_name = str_of(&m["Secret"]["metadata"]["name"], "Secret name");
    let env_from = seq_of(&container["envFrom"], "envFrom");
    assert!(
        env_from
            .iter()
            .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name)),
        "the container imports the Secret {secret_name}"
    );
    provided.extend(secrets.keys().cloned());
    let missing: Vec<_> = required.difference(&provided).collect();
    assert!(
        missing.is_empty(),
        "config variables nobody sets: {missing:?}"
    );
    // Every secret is used.
    let unused: Vec<_> = secrets.keys().filter(|k| !all.contains(*k)).collect();
    assert!(
        unused.is_empty(),
        "Secret keys the config never uses: {unused:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(&name);
    std::fs::write(&path, &config).unwrap();
    let out = validate_no_environment(&path, &secrets, &all);
    assert!(
        out.status.success(),
        "the ConfigMap's config does not validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the Secret the agent stops at once, naming what is missing.
    let out = validate_no_environment(&path, &BTreeMap::new(), &all);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = required.iter().next().unwrap();
    assert!(stderr.contains(first.as_str()), "{stderr}");
}

#[test]
fn kubernetes_deployment_runs_two_agents_without_volumes_with_probes() {
    let m = manifests();
    let deployment = &m["Deployment"];
    let spec = &deployment["spec"];
    // State lives in the storage account: two replicas, one active and
    // one standby, and a rolling update is safe (the new pod stands by).
    assert_eq!(spec["replicas"].as_u64(), Some(2), "replicas");
    assert_eq!(
        spec["strategy"]["type"].as_str(),
        Some("RollingUpdate"),
        "strategy"
    );
    assert!(
        !m.contains_key("PersistentVolumeClaim"),
        "no volume: nothing needed survives on local disk"
    );
    let labels = &spec["selector"]["matchLabels"];
    for (k, v) in labels.as_mapping().expect("selector") {
        assert_eq!(
            &spec["template"]["metadata"]["labels"][str_of(k, "label")],
            v,
            "the pod template carries the selector's labels"
        );
    }

    let pod = &spec["template"]["spec"];
    let container = the_container(&m);
    let (file_name, config_text) = configmap_config(&m);
    let config: toml::Table = toml::from_str(&config_text).expect("the config is TOML");

    // The config is mounted where the image reads it.
    let volumes = seq_of(&pod["volumes"], "volumes");
    let volume = |pred: &dyn Fn(&Value) -> bool| -> String {
        let v = volumes.iter().find(|v| pred(v)).expect("volume");
        str_of(&v["name"], "volume name").to_string()
    };
    let cm_name = str_of(&m["ConfigMap"]["metadata"]["name"], "ConfigMap name");
    let config_volume = volume(&|v| v["configMap"]["name"].as_str() == Some(cm_name));
    assert_eq!(volumes.len(), 1, "the config is the only volume");
    let mounts = seq_of(&container["volumeMounts"], "volumeMounts");
    let mount_of = |vol: &str| -> String {
        let mount = mounts
            .iter()
            .find(|mnt| mnt["name"].as_str() == Some(vol))
            .unwrap_or_else(|| panic!("volume {vol} is not mounted"));
        assert!(
            mount["subPath"].is_null(),
            "subPath mounts never see updates"
        );
        str_of(&mount["mountPath"], "mountPath").to_string()
    };
    let config_mount = mount_of(&config_volume);
    assert_eq!(
        format!("{config_mount}/{file_name}"),
        image_config_path(),
        "the ConfigMap is mounted where the image's MONGO_ADLS_CONFIG points"
    );
    // The state is in the storage account, under the pipeline's id.
    assert!(config.get("data_dir").is_none(), "no data_dir");
    let state = config.get("state").expect("[state]");
    assert_eq!(
        state.get("store").and_then(|v| v.as_str()),
        Some("azure_blob")
    );
    assert!(
        state.get("id").and_then(|v| v.as_str()).is_some(),
        "state.id"
    );

    // Probes reach /health on api.address, which listens beyond loopback.
    let api = config.get("api").expect("[api]");
    let address: std::net::SocketAddr = api
        .get("address")
        .and_then(|v| v.as_str())
        .expect("api.address is set")
        .parse()
        .unwrap();
    assert!(
        address.ip().is_unspecified(),
        "api.address {address} must listen on all interfaces for the kubelet"
    );
    let ports = seq_of(&container["ports"], "ports");
    let port_number = |port: &Value| -> u64 {
        match port {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no port named {name}")),
            other => panic!("probe port {other:?}"),
        }
    };
    let unhealthy_after = api
        .get("unhealthy_after_secs")
        .and_then(|v| v.as_integer())
        .unwrap_or(60) as u64;
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &container[probe];
        assert_eq!(p["httpGet"]["path"].as_str(), Some("/health"), "{probe}");
        assert_eq!(
            port_number(&p["httpGet"]["port"]),
            u64::from(address.port()),
            "{probe} port"
        );
    }
    // Liveness waits well past a MongoDB election or a storage outage:
    // /health turns 503 after unhealthy_after_secs; the restart comes
    // minutes after that, not at the first 503.
    let live = &container["livenessProbe"];
    let patience = live["periodSeconds"].as_u64().unwrap_or(10)
        * live["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        patience >= 2 * unhealthy_after,
        "liveness restarts after {patience} s of 503; allow at least {} s",
        2 * unhealthy_after
    );

    // SIGTERM drains within the agent's limit, before the kubelet kills.
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .map(|a| a.iter().map(|v| str_of(v, "arg")).collect())
        .unwrap_or_default();
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > graceful_limit(&args),
        "terminationGracePeriodSeconds {grace} must exceed the graceful shutdown limit"
    );

    // Sized from docs/benchmarks.md's figures: peak RSS up to 150 MB.
    let res = &container["resources"];
    let request = mib(str_of(&res["requests"]["memory"], "memory request"));
    let limit = mib(str_of(&res["limits"]["memory"], "memory limit"));
    assert!(
        request >= 150 && limit >= request + 128,
        "memory {request}/{limit} MiB"
    );
    assert!(res["requests"]["cpu"].as_str().is_some(), "cpu request");

    // Non-root, as the image's user; nothing writable.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(psc["runAsUser"].as_u64(), Some(65532), "the image's uid");
    let csc = &container["securityContext"];
    assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));

    // kubectl apply -k applies every manifest.
    let kustomization: Value =
        serde_norway::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    let listed: BTreeSet<&str> = seq_of(&kustomization["resources"], "resources")
        .iter()
        .map(|r| str_of(r, "resource"))
        .collect();
    for entry in std::fs::read_dir(repo().join("deploy/kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(name.as_str()),
                "{name} not in kustomization.yaml"
            );
        }
    }
}

/// `[Service]` settings of the unit: each key with all its values.
fn unit_settings(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut section = String::new();
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        out.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_does_not_loop_on_configuration_errors() {
    let text = read("deploy/systemd/mongo-adls.service");
    let settings = unit_settings(&text);
    let get = |key: &str| -> String {
        let values = settings
            .get(&("Service".to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("[Service] {key} is missing"));
        values.last().unwrap().clone()
    };
    let exec = get("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/mongo-adls");
    assert!(exec.contains("--config /etc/mongo-adls/"), "{exec}");

    assert!(
        get("DynamicUser") == "yes" || settings.contains_key(&("Service".into(), "User".into())),
        "runs as an unprivileged user"
    );
    assert_eq!(
        get("StateDirectory"),
        "mongo-adls",
        "data_dir /var/lib/mongo-adls"
    );
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("Restart"), "on-failure");
    assert!(
        get("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == "78"),
        "exit 78 (configuration error) must not restart"
    );
    assert_eq!(get("KillSignal"), "SIGTERM");
    let stop = get("TimeoutStopSec");
    let stop: u64 = stop
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > graceful_limit(&args),
        "TimeoutStopSec {stop} must exceed the graceful shutdown limit"
    );
    assert!(get("EnvironmentFile").starts_with("/etc/mongo-adls/"));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), value, "{key}");
    }
    // --require-healthy is discussed (it is off: see the unit's comment).
    assert!(text.contains("--require-healthy"));

    // systemd's own parser, where installed: no unknown key, no bad value.
    if let Ok(out) = Command::new("systemd-analyze").arg("--version").output() {
        if out.status.success() {
            let dir = tempfile::tempdir().unwrap();
            let unit = dir.path().join("mongo-adls.service");
            // verify wants the binary to exist.
            let bin = env!("CARGO_BIN_EXE_mongo-adls");
            std::fs::write(&unit, text.replace("/usr/local/bin/mongo-adls", bin)).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify: {said}"
            );
        }
    } else {
        println!("systemd-analyze not installed: the unit was not verified by systemd");
    }
}

// ---------------------------------------------------------------------------
// The image, with podman.

/// `podman` with the settings that work on a host without systemd or
/// cgroup delegation (this machine and CI).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Images and containers the test made, removed however it ends.
struct Cleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman().args(["rm", "-f", "-v", c]).output();
        }
        for i in self.images.iter().rev() {
            let _ = podman().args(["rmi", "-f", i]).output();
        }
    }
}

/// Why the image test cannot run here, if it cannot.
fn podman_missing() -> Option<String> {
    for tool in [
        ["podman", "--version"],
        ["runc", "--version"],
        ["ldd", "--version"],
    ] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(out) if out.status.success() => {}
            _ => return Some(format!("{} is not installed", tool[0])),
        }
    }
    None
}

/// A root filesystem with what the binary needs at run time and nothing
/// else: its shared libraries (from `ldd`), a CA bundle, /tmp, /var/lib.
fn base_rootfs(dir: &Path, binary: &str) {
    let out = run_ok(Command::new("ldd").arg(binary));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        let Some(lib) = path else { continue };
        let dest = dir.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Follows symlinks: the file itself under the name asked for.
        std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    let certs = dir.join("etc/ssl/certs");
    std::fs::create_dir_all(&certs).unwrap();
    let host_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if host_bundle.exists() {
        std::fs::copy(host_bundle, certs.join("ca-certificates.crt")).unwrap();
    } else {
        std::fs::write(certs.join("ca-certificates.crt"), "").unwrap();
    }
    std::fs::create_dir_all(dir.join("var/lib")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// GET /health on 127.0.0.1:`port`: the status code, if it answered.
fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn container_image_builds_on_a_local_base_and_runs_the_mounted_config() {
    if let Some(why) = podman_missing() {
        println!("skipped: {why} (CI installs podman and runc in .ci/run)");
        return;
    }
    let started = Instant::now();
    let binary = env!("CARGO_BIN_EXE_mongo-adls");
    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let base = format!("localhost/mongo-adls-test-base:{tag}");
    let image = format!("localhost/mongo-adls-test:{tag}");
    let mut cleanup = Cleanup {
        images: Vec::new(),
        containers: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();

    // The base: a tarball of the binary's libraries, imported (no registry).
    let rootfs = dir.path().join("rootfs");
    base_rootfs(&rootfs, binary);
    let tarball = dir.path().join("base.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );
    cleanup.images.push(base.clone());
    run_ok(podman().arg("import").arg(&tarball).arg(&base));

    // The build context: the binary alone, without debug info when objcopy
    // is there (as the source stage strips it), which keeps the build short.
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    let in_context = context.join("mongo-adls");
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&in_context)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(binary, &in_context).unwrap();
    }
    let build_started = Instant::now();
    cleanup.images.push(image.clone());
    run_ok(
        podman()
            .args(["build", "--pull=never", "--layers=false", "-q"])
            .arg("-f")
            .arg(repo().join("deploy/Containerfile"))
            .args(["--build-arg", "BINARY_FROM=prebuilt"])
            .arg("--build-arg")
            .arg(format!("BASE_IMAGE={base}"))
            .args(["-t", &image])
            .arg(&context),
    );
    let build_time = build_started.elapsed();

    let inspect = run_ok(podman().args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}",
        &image,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        r#"65532:65532|["mongo-adls"]"#,
        "non-root user and entrypoint"
    );

    // podman's default limits (nofile 1048576) are above what this sandbox
    // lets runc set; the agent needs far fewer.
    let run = || {
        let mut cmd = podman();
        cmd.args([
            "run",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        cmd
    };

    let out = run_ok(run().args(["--rm", &image, "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: mongo-adls"), "{help}");

    // The ConfigMap's config, mounted where the Deployment mounts it, with
    // the Secret's variables in the environment, as in the pod.
    let m = manifests();
    let (name, config) = configmap_config(&m);
    let secrets = secret_vars(&m);
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join(&name), &config).unwrap();
    let mut cmd = run();
    cmd.args(["--rm", "--read-only", "-v"])
        .arg(format!("{}:/etc/mongo-adls:ro", config_dir.display()));
    for (k, v) in &secrets {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    let out = run_ok(
        cmd.args([&image, "validate", "--no-environment", "-c"])
            .arg(image_config_path()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Configuration is valid"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The agent itself, as the image's user, with a read-only root and a
    // volume on data_dir (owned by the user, as the image's directory is):
    // /health answers, SIGTERM (podman stop) exits 0, the checkpoint is in
    // data_dir.
    let port = support::free_port();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(
        agent_dir.join(&name),
        format!(
            "data_dir = \"/var/lib/mongo-adls\"\n[api]\naddress = \"127.0.0.1:{port}\"\n\
             [sources.demo]\ntype = \"demo_events\"\ninterval_secs = 0.05\n\
             [sinks.out]\ntype = \"blackhole\"\ninputs = [\"demo\"]\n"
        ),
    )
    .unwrap();
    let container = format!("mongo-adls-test-{tag}");
    cleanup.containers.push(container.clone());
    let mut agent = run()
        .args(["--name", &container, "--read-only", "--network", "host"])
        .args(["-v", "/var/lib/mongo-adls", "-v"])
        .arg(format!("{}:/etc/mongo-adls:ro", agent_dir.display()))
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // /health answers before the pipeline runs; stopped then, the agent
    // ends "during start-up" with no checkpoint. Wait for delivered events.
    let delivered = || {
        support::http_get(port, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("component_sent_events_total") && l.contains("component_id=\"out\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .any(|n| n > 0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(port) != Some(200) || !delivered() {
        if let Some(status) = agent.try_wait().unwrap() {
            let mut err = String::new();
            agent
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the agent in the container exited ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no events delivered with /health 200 in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run_ok(podman().args(["stop", "-t", "30", &container]));
    let status = agent.wait().unwrap();
    let mut err = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {err}");
    assert!(err.contains("Shutdown complete"), "{err}");
    let files = run_ok(
        podman()
            .args(["cp", &format!("{container}:/var/lib/mongo-adls"), "-"])
            .stderr(Stdio::piped()),
    );
    let listing = run_ok(Command::new("tar").arg("-tf").arg("-").stdin({
        let f = dir.path().join("data.tar");
        std::fs::write(&f, &files.stdout).unwrap();
        std::fs::File::open(f).unwrap()
    }));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("demo/checkpoint.json"),
        "data_dir holds: {listing}"
    );

    drop(cleanup);
    println!(
        "image built in {:.1} s; test took {:.1} s",
        build_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
