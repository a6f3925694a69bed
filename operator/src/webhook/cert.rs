//! The webhook's certificate, made and renewed by the operator itself: a
//! CA and a serving certificate for the webhook Service's DNS names, kept
//! in a Secret the chart creates empty (so every replica serves the same
//! one and a restart keeps it), with the CA written into the
//! MutatingWebhookConfiguration's `caBundle`. The serving certificate is
//! renewed, under the same CA, once two thirds of its life has passed, so
//! the apiserver never has to learn a new CA for a renewal.

use crate::{Error, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use time::{Duration, OffsetDateTime};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// Unix seconds after which the serving certificate is invalid.
const NOT_AFTER: &str = "data.weir.io/not-after";
/// The DNS names it was made for, comma separated.
const NAMES: &str = "data.weir.io/dns-names";
/// The CA outlives any serving certificate it signs by far.
const CA_LIFE: Duration = Duration::days(3650);

/// The certificate the webhook serves and the CA that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCert {
    pub ca_pem: String,
    ca_key_pem: String,
    pub cert_pem: String,
    key_pem: String,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

/// The CA's subject and usages, the same every time: a serving certificate
/// signed later under the same key names the issuer the CA certificate
/// names, so the CA never has to be parsed back.
fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "weir-webhook-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + CA_LIFE;
    p
}

fn rcgen_err(what: &str, e: rcgen::Error) -> Error {
    Error::Webhook(format!("{what}: {e}"))
}

impl ServingCert {
    /// A new CA and a serving certificate for `dns_names`, valid `life`.
    pub fn new(dns_names: &[String], now: OffsetDateTime, life: Duration) -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(|e| rcgen_err("CA key", e))?;
        let ca = ca_params(now)
            .self_signed(&ca_key)
            .map_err(|e| rcgen_err("CA certificate", e))?;
        Self::signed(ca.pem(), ca_key.serialize_pem(), dns_names, now, life)
    }

    /// A serving certificate for `dns_names`, valid `life`, under this
    /// certificate's CA.
    pub fn renewed(
        &self,
        dns_names: &[String],
        now: OffsetDateTime,
        life: Duration,
    ) -> Result<Self> {
        Self::signed(
            self.ca_pem.clone(),
            self.ca_key_pem.clone(),
            dns_names,
            now,
            life,
        )
    }

    fn signed(
        ca_pem: String,
        ca_key_pem: String,
        dns_names: &[String],
        now: OffsetDateTime,
        life: Duration,
    ) -> Result<Self> {
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| rcgen_err("CA key", e))?;
        let issuer = Issuer::new(ca_params(now), ca_key);
        let key = KeyPair::generate().map_err(|e| rcgen_err("key", e))?;
        let mut p =
            CertificateParams::new(dns_names.to_vec()).map_err(|e| rcgen_err("DNS names", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + life;
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_err("serving certificate", e))?;
        Ok(Self {
            ca_pem,
            ca_key_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: p.not_after.unix_timestamp(),
            dns_names: dns_names.to_vec(),
        })
    }

    /// Whether it is time for a new serving certificate: two thirds of a
    /// `life` have passed, or it was made for other names.
    pub fn due(&self, dns_names: &[String], now: OffsetDateTime, life: Duration) -> bool {
        let left = self.not_after - now.unix_timestamp();
        self.dns_names != dns_names || left < life.whole_seconds() / 3
    }

    fn from_secret(s: &Secret) -> Option<Self> {
        let data = s.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        let notes = s.metadata.annotations.as_ref()?;
        Some(Self {
            ca_pem: text(CA_CERT)?,
            ca_key_pem: text(CA_KEY)?,
            cert_pem: text(TLS_CERT)?,
            key_pem: text(TLS_KEY)?,
            not_after: notes.get(NOT_AFTER)?.parse().ok()?,
            dns_names: notes.get(NAMES)?.split(',').map(str::to_owned).collect(),
        })
    }

    fn into_secret(self, mut s: Secret) -> Secret {
        let data: BTreeMap<String, ByteString> = [
            (CA_CERT, self.ca_pem),
            (CA_KEY, self.ca_key_pem),
            (TLS_CERT, self.cert_pem),
            (TLS_KEY, self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
        .collect();
        s.data = Some(data);
        let notes = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
        notes.insert(NOT_AFTER.into(), self.not_after.to_string());
        notes.insert(NAMES.into(), self.dns_names.join(","));
        s
    }

    /// The key and chain rustls serves.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>> {
        let bad = |what: &str, e: String| Error::Webhook(format!("{what}: {e}"));
        let chain = vec![
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
                .map_err(|e| bad("serving certificate", e.to_string()))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("serving key", e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| bad("serving key", e.to_string()))?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)))
    }
}

/// Where the certificate lives and what it is for.
#[derive(Debug, Clone)]
pub struct CertSettings {
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept current.
    pub configuration: String,
    pub dns_names: Vec<String>,
    pub life: Duration,
}

/// The serving certificate as the Secret holds it, made or renewed first
/// when it is missing or due. Replicas racing here: one write wins (the
/// Secret's resource version), the others read the winner's next time.
pub async fn current(client: &Client, s: &CertSettings) -> Result<ServingCert> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let secret = secrets.get(&s.secret).await?;
    let now = OffsetDateTime::now_utc();
    let held = ServingCert::from_secret(&secret);
    let next = match &held {
        Some(c) if !c.due(&s.dns_names, now, s.life) => return Ok(c.clone()),
        Some(c) => c.renewed(&s.dns_names, now, s.life)?,
        None => ServingCert::new(&s.dns_names, now, s.life)?,
    };
    tracing::info!(
        secret = %s.secret,
        renewed = held.is_some(),
        not_after = next.not_after,
        "writing the webhook's serving certificate"
    );
    secrets
        .replace(
            &s.secret,
            &PostParams::default(),
            &next.clone().into_secret(secret),
        )
        .await?;
    Ok(next)
}

/// Writes `ca_pem` into every webhook of the configuration whose
/// `caBundle` differs.
pub async fn publish_ca(client: &Client, s: &CertSettings, ca_pem: &str) -> Result<()> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = configs.get_opt(&s.configuration).await? else {
        return Err(Error::Webhook(format!(
            "MutatingWebhookConfiguration {} not found",
            s.configuration
        )));
    };
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let ops: Vec<serde_json::Value> = config
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref() != Some(&want))
        .map(|(i, _)| {
            serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want})
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| Error::Webhook(format!("caBundle patch: {e}")))?;
    configs
        .patch(
            &s.configuration,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    tracing::info!(configuration = %s.configuration, "published the webhook's CA");
    Ok(())
}

/// The serving certificate the TLS listener hands out, swapped in place
/// when it is renewed; none until the first is loaded (handshakes fail,
/// and the apiserver, told to ignore a failing webhook, admits the pod).
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<rustls::sign::CertifiedKey>>>);

impl CertSlot {
    pub fn set(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.0.write().expect("cert slot") = Some(key);
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.read().expect("cert slot").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn names() -> Vec<String> {
        vec![
            "weir-webhook.weir.svc".into(),
            "weir-webhook.weir.svc.cluster.local".into(),
        ]
    }

    #[test]
    fn a_renewed_certificate_keeps_the_ca_and_verifies_under_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = OffsetDateTime::now_utc();
        let life = Duration::days(90);
        let first = ServingCert::new(&names(), now, life).unwrap();
        assert!(!first.due(&names(), now, life));
        assert!(!first.due(&names(), now + Duration::days(59), life));
        assert!(
            first.due(&names(), now + Duration::days(61), life),
            "two thirds used"
        );
        assert!(first.due(&names()[..1], now, life), "other names");
        let later = now + Duration::days(61);
        let second = first.renewed(&names(), later, life).unwrap();
        assert_eq!(second.ca_pem, first.ca_pem, "the apiserver's CA stays");
        assert_ne!(second.cert_pem, first.cert_pem);
        assert_eq!(second.not_after, (later + life).unix_timestamp());
        // Both verify for the Service's name against the one CA.
        for cert in [&first, &second] {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(cert.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            let leaf = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
            let name = rustls::pki_types::ServerName::try_from("weir-webhook.weir.svc").unwrap();
            let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                (now + Duration::days(62)).unix_timestamp() as u64,
            ));
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], at)
                .unwrap();
            cert.certified_key().unwrap();
        }
    }

    #[test]
    fn the_secret_round_trips_and_an_empty_one_holds_nothing() {
        let now = OffsetDateTime::now_utc();
        let cert = ServingCert::new(&names(), now, Duration::days(30)).unwrap();
        let secret = cert.clone().into_secret(Secret::default());
        assert_eq!(ServingCert::from_secret(&secret), Some(cert));
        assert_eq!(ServingCert::from_secret(&Secret::default()), None);
    }
}
