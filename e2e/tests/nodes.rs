//! Weir across the test bed's three nodes: two datasets whose runtimes
//! share every node run side by side, each Bound, each runtime's workers
//! one per node, and each readable through its own cache. Both run on the
//! host's network, where the same ports on one node would clash: each
//! gets a block of host ports of its own.

use kube::api::PostParams;
use sha2::Digest;
use std::time::Duration;
use weir_e2e::cache::{
    create_secret, dataset, install_crds, runtime, wait_bound, wait_ready, worker_nodes,
};
use weir_e2e::in_namespace;
use weir_e2e::weir::{BridgeS3, OperatorProcess, bytes};
use weir_operator::crd::runtime::NetworkMode;
use weir_operator::crd::{CacheRuntime, Dataset};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datasets_share_three_nodes() -> anyhow::Result<()> {
    in_namespace("two-ds", async |ns| {
        install_crds(ns).await?;
        let nodes = ns.bed.node_names()?;
        assert!(
            nodes.len() >= 3,
            "three nodes are needed (make test brings them up): {nodes:?}"
        );
        let s3 = BridgeS3::start("two")?;
        let file = bytes(6 << 20, 7);
        s3.put("data/shared.bin", &file)?;
        create_secret(ns, "unused-key", "unused-secret").await?;
        let op = OperatorProcess::start(&ns.bed, &ns.name, "op-two")?;
        let pp = PostParams::default();
        let names = ["alpha", "beta"];
        for name in names {
            ns.api::<Dataset>().create(&pp, &dataset(name, &s3)).await?;
            let mut rt = runtime(name, 1, 3);
            rt.spec.network_mode = NetworkMode::HostNetwork;
            ns.api::<CacheRuntime>().create(&pp, &rt).await?;
        }
        let want = format!("{:x}", sha2::Sha256::digest(&file));
        for name in names {
            wait_bound(ns, name, Duration::from_secs(240)).await?;
            wait_ready(ns, &format!("{name}-worker"), 3, Duration::from_secs(180)).await?;
            let on = worker_nodes(ns, name).await?;
            assert_eq!(on.len(), 3, "{name}: a worker on each node: {on:?}");
            // Read through the cache: a master's client reads the blocks
            // through the workers, which fetch them from S3.
            let read = ns.kubectl(&[
                "exec",
                &format!("{name}-master-0"),
                "--",
                "sh",
                "-c",
                "set -o pipefail; weir fs cat /data/shared.bin | sha256sum",
            ])?;
            assert!(
                read.starts_with(&want),
                "{name} reads the bytes in S3: {read}"
            );
        }
        let bases: Vec<Option<i32>> = {
            let mut b = Vec::new();
            for name in names {
                let rt = ns.api::<CacheRuntime>().get(name).await?;
                b.push(rt.status.and_then(|s| s.host_port_base));
            }
            b
        };
        assert!(
            bases.iter().all(Option::is_some) && bases[0] != bases[1],
            "each runtime has host ports of its own: {bases:?}"
        );
        drop(op);
        Ok(())
    })
    .await
}
