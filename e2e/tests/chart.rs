//! The chart as the apiserver sees it: `helm lint` is clean, and the
//! rendered chart (CRDs included, default values and a namespaced install)
//! passes a server-side dry-run apply on the test-bed cluster, so every
//! object is valid against the real API's schemas.

use std::io::Write;
use std::process::{Command, Stdio};
use weir_e2e::in_namespace;

fn helm(bed: &weir_e2e::Bed, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bed.bin.join("helm")).args(args).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "helm {args:?}: {text}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_lints_and_renders_objects_the_apiserver_accepts() -> anyhow::Result<()> {
    in_namespace("chart", async |ns| {
        let chart = ns.bed.repo.join("charts/weir");
        let chart = chart.to_string_lossy();
        let lint = helm(&ns.bed, &["lint", "--strict", &chart])?;
        assert!(lint.contains("0 chart(s) failed"), "{lint}");
        for values in [
            vec![],
            vec![
                "--set",
                "operator.watchNamespace=team-a",
                "--set",
                "kubeletRootDir=/var/lib/k0s/kubelet",
                "--set",
                "logFormat=json",
            ],
        ] {
            let mut args = vec![
                "template",
                "weir",
                &chart,
                "--include-crds",
                "--namespace",
                &ns.name,
            ];
            args.extend(values.iter().copied());
            let rendered = helm(&ns.bed, &args)?;
            for kind in [
                "CustomResourceDefinition",
                "Deployment",
                "DaemonSet",
                "CSIDriver",
                "ClusterRole",
                "Role",
            ] {
                assert!(
                    rendered.contains(&format!("kind: {kind}\n")),
                    "{kind} rendered"
                );
            }
            let mut apply = Command::new(ns.bed.bin.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&ns.bed.kubeconfig)
                .args([
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "-n",
                    &ns.name,
                    "-f",
                    "-",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            apply
                .stdin
                .take()
                .expect("stdin")
                .write_all(rendered.as_bytes())?;
            let out = apply.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "server-side dry run of {values:?}: {text}"
            );
            assert!(
                text.contains(
                    "csidriver.storage.k8s.io/csi.weir.io serverside-applied (server dry run)"
                ),
                "{text}"
            );
        }
        Ok(())
    })
    .await
}
