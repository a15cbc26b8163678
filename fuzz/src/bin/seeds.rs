//! Writes the seed corpora, one directory per target, from the repository's test
//! fixtures (config files the hardened chart renders, the CRD samples) and the inputs
//! the unit tests use. Usage: `seeds <repository root> <output dir>`.

use std::fs;
use std::path::Path;

use prost::Message;
use spiffe_csi_driver::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use spiffe_csi_driver::csi::v1::{NodePublishVolumeRequest, VolumeCapability};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: seeds <repository root> <output dir>");
        std::process::exit(2);
    };
    let (root, out) = (Path::new(&root), Path::new(&out));
    let mut corpus = Corpus {
        out,
        counts: vec![],
    };

    for file in yaml_files(&root.join("operator/tests/fixtures/hardened-chart")) {
        corpus.add("config", fs::read(&file).unwrap());
    }
    corpus.add("config", b"trustDomain: td\nclusterName: c\n".to_vec());
    corpus.add(
        "config",
        b"trustDomain: ${TD}\nclusterName: c\ngcInterval: 1e+10\nignoreNamespaces: [\"^kube-.*\"]\n"
            .to_vec(),
    );

    for file in yaml_files(&root.join("e2e/tests/crds/samples")) {
        let text = fs::read_to_string(&file).unwrap();
        let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let json = serde_json::to_vec(&value).unwrap();
        let spec = &value["spec"];
        for key in ["spiffeIDTemplate"] {
            if let Some(t) = spec[key].as_str() {
                corpus.add("template", t.as_bytes().to_vec());
            }
        }
        let dns = spec["dnsNameTemplates"][0].as_str().unwrap_or("");
        let selector = spec["workloadSelectorTemplates"][0].as_str().unwrap_or("");
        if let Some(id) = spec["spiffeIDTemplate"].as_str() {
            corpus.add("template", format!("{id}\0{dns}\0{selector}").into_bytes());
        }
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "spire.spiffe.io", "version": "v1alpha1",
                "kind": value["kind"]}, "operation": "CREATE", "name": value["metadata"]["name"],
                "object": value}
        });
        corpus.add("crd", json);
        corpus.add("crd", serde_json::to_vec(&review).unwrap());
    }
    for t in [
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
        "spiffe://{{ .TrustDomain }}/{{ or .PodMeta.Labels.app \"none\" }}/{{ index .NodeMeta.Labels \"zone\" }}",
        "spiffe://{{ .TrustDomain }}/{{ range $k, $v := .PodMeta.Labels }}{{ $k }}-{{ $v }}{{ end }}",
        "spiffe://{{ .TrustDomain }}/{{ with .NamespaceMeta.Labels.team }}{{ . }}{{ else }}x{{ end }}",
        "spiffe://td/x\0{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc\0k8s:sa:{{ .PodSpec.ServiceAccountName }}",
    ] {
        corpus.add("template", t.as_bytes().to_vec());
    }

    let good = "/var/lib/kubelet/pods/6f3c2a9e-1b7d-4e55-9a0c-2d8f4b1e7c31/volumes/kubernetes.io~csi/spiffe/mount";
    for path in [
        good,
        "/pods/u/volumes/kubernetes.io~csi/v/mount",
        "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/../../../x/volumes/kubernetes.io~csi/v/mount",
        "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/v/mount",
    ] {
        corpus.add("target_path", path.as_bytes().to_vec());
    }
    let request = NodePublishVolumeRequest {
        volume_id: "csi-abc".into(),
        target_path: good.into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: 1 }),
        }),
        readonly: true,
        volume_context: [
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
            ("csi.storage.k8s.io/pod.namespace", "prod"),
            (
                "csi.storage.k8s.io/pod.uid",
                "6f3c2a9e-1b7d-4e55-9a0c-2d8f4b1e7c31",
            ),
            ("csi.storage.k8s.io/serviceAccount.name", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect(),
        ..Default::default()
    };
    corpus.add("csi_publish", request.encode_to_vec());
    let mut writable = request.clone();
    writable.readonly = false;
    corpus.add("csi_publish", writable.encode_to_vec());

    // Annotation identities: `<spiffe-id>\0<dns-names>[\0<allowed template>]`.
    for seed in [
        "spiffe://td/ns/shop/web",
        "spiffe://td/ns/shop/sa/web\0web.shop.svc, *.web.shop.svc,web.shop.svc",
        "spiffe://td/ns/other/web\0",
        "spiffe://elsewhere/ns/shop/web\0a.b",
        "spiffe://td/ns/shop/web\0bad name,\u{7f}",
        "spiffe://td/ns/shop/sa/web\0\0/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        "spiffe://td/team/t1/x\0\0/team/{{ .NamespaceMeta.Labels.team }}/*",
        "spiffe://td/x\0\0/{{ .PodMeta.Labels.missing }}/*",
    ] {
        corpus.add("annotation", seed.as_bytes().to_vec());
    }

    for (target, count) in corpus.counts {
        println!("{target}: {count} seeds");
    }
}

struct Corpus<'a> {
    out: &'a Path,
    counts: Vec<(&'static str, usize)>,
}

impl Corpus<'_> {
    fn add(&mut self, target: &'static str, input: Vec<u8>) {
        let n = match self.counts.iter_mut().find(|(t, _)| *t == target) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.push((target, 1));
                1
            }
        };
        let dir = self.out.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{n:03}")), input).unwrap();
    }
}

fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}
