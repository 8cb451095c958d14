//! Reaching the broker of one registered queue: its `brokerEndpoint` (URL
//! or `urlFrom`, credentials from Secrets) turned into a connected
//! [`Broker`] of the queue's type, and the form the workload's variable
//! gives the queue in (a name, or an SQS queue URL), so a temporary queue
//! is handed to the workload and the sessions in the same form.

use super::SplitError;
use crate::crd::queue_split::{BrokerEndpoint, QueueBroker, SecretKey, SplitQueueSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use remora_queues::broker::{Broker, QueueName};
use remora_queues::kafka::{KafkaBroker, KafkaConfig};
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::sqs::{SqsBroker, SqsConfig};
use std::sync::Arc;

/// The SQS region when the registration names none.
pub const DEFAULT_SQS_REGION: &str = "us-east-1";

/// How the workload's variable names a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueForm {
    /// The queue's (topic's) name itself.
    Name,
    /// An SQS queue URL, `<endpoint>/<account>/<name>`: the part before the
    /// name is kept, and a temporary queue is given as the same URL with its
    /// own name.
    SqsUrl {
        /// Everything up to and including the last `/`.
        prefix: String,
    },
}

impl QueueForm {
    /// The queue `value` names and the form it is in.
    ///
    /// # Errors
    /// An SQS URL without a queue name after its last `/`.
    pub fn parse(broker: QueueBroker, value: &str) -> Result<(QueueName, QueueForm), SplitError> {
        let is_url = value.starts_with("http://") || value.starts_with("https://");
        if broker != QueueBroker::Sqs || !is_url {
            return Ok((QueueName(value.to_owned()), QueueForm::Name));
        }
        let trimmed = value.trim_end_matches('/');
        match trimmed.rsplit_once('/') {
            Some((prefix, name)) if !name.is_empty() && !prefix.ends_with('/') => Ok((
                QueueName(name.to_owned()),
                QueueForm::SqsUrl {
                    prefix: format!("{prefix}/"),
                },
            )),
            _ => Err(SplitError::Value(format!(
                "{value:?} is neither an SQS queue name nor a queue URL \
                 (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
            ))),
        }
    }

    /// `queue` in this form: the value for a variable.
    pub fn render(&self, queue: &QueueName) -> String {
        match self {
            QueueForm::Name => queue.0.clone(),
            QueueForm::SqsUrl { prefix } => format!("{prefix}{}", queue.0),
        }
    }
}

/// Reads the Secrets of one namespace.
pub(super) struct Secrets<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
}

impl Secrets<'_> {
    /// The text in `key`.
    pub async fn get(&self, key: &SecretKey) -> Result<String, SplitError> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), self.namespace)
            .get(&key.name)
            .await
            .map_err(|source| SplitError::Api {
                what: format!("reading Secret {}", key.name),
                source,
            })?;
        let bytes = secret
            .data
            .and_then(|d| d.get(&key.key).cloned())
            .ok_or_else(|| {
                SplitError::Value(format!("Secret {} has no key {:?}", key.name, key.key))
            })?;
        String::from_utf8(bytes.0).map_err(|_| {
            SplitError::Value(format!("Secret {} key {:?} is not text", key.name, key.key))
        })
    }

    async fn get_opt(&self, key: Option<&SecretKey>) -> Result<Option<String>, SplitError> {
        match key {
            Some(key) => self.get(key).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Connects to the broker of registered queue `id`.
///
/// # Errors
/// A missing endpoint or credential, an unreachable broker, a type this
/// operator does not split yet.
pub(super) async fn connect(
    secrets: &Secrets<'_>,
    id: &str,
    queue: &SplitQueueSpec,
) -> Result<Arc<dyn Broker>, SplitError> {
    let endpoint = &queue.broker_endpoint;
    let url = match (&endpoint.url, &endpoint.url_from) {
        (_, Some(key)) => Some(secrets.get(key).await?),
        (Some(url), None) => Some(url.clone()),
        (None, None) => None,
    };
    let user = secrets.get_opt(endpoint.username_from.as_ref()).await?;
    let password = secrets.get_opt(endpoint.password_from.as_ref()).await?;
    let failed =
        |e: remora_queues::broker::BrokerError| SplitError::Value(format!("queue {id}: {e}"));
    match queue.broker {
        QueueBroker::Rabbitmq => {
            let Some(mut uri) = url else {
                return Err(SplitError::Value(format!(
                    "queue {id}: a rabbitmq brokerEndpoint needs url or urlFrom"
                )));
            };
            if let (Some(user), Some(password)) = (&user, &password) {
                uri = with_credentials(&uri, user, password);
            }
            let broker = RabbitBroker::connect(&uri).await.map_err(failed)?;
            Ok(Arc::new(broker))
        }
        QueueBroker::Sqs => {
            let config = sqs_config(id, endpoint, url, user, password)?;
            let broker = SqsBroker::new(config);
            Ok(Arc::new(broker))
        }
        QueueBroker::Kafka => {
            let config = kafka_config(id, endpoint, url, user, password)?;
            let broker = KafkaBroker::connect(config).await.map_err(failed)?;
            Ok(Arc::new(broker))
        }
        QueueBroker::Pubsub => Err(SplitError::Value(format!(
            "queue {id}: pubsub queues are not split by this operator yet \
             (rabbitmq, sqs and kafka are)"
        ))),
    }
}

/// The SQS client settings: the endpoint (unset: the region's AWS one),
/// the region, and the access key from the Secrets or, when the
/// registration names none, the operator's own `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
fn sqs_config(
    id: &str,
    endpoint: &BrokerEndpoint,
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Result<SqsConfig, SplitError> {
    let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let (access_key_id, secret_access_key, session_token) = match (user, password) {
        (Some(id), Some(secret)) => (id, secret, None),
        (None, None) => match (
            from_env("AWS_ACCESS_KEY_ID"),
            from_env("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => (id, secret, from_env("AWS_SESSION_TOKEN")),
            _ => {
                return Err(SplitError::Value(format!(
                    "queue {id}: an sqs brokerEndpoint needs usernameFrom (access key id) and \
                     passwordFrom (secret access key), or the operator needs \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )));
            }
        },
        _ => {
            return Err(SplitError::Value(format!(
                "queue {id}: an sqs brokerEndpoint needs both usernameFrom and passwordFrom"
            )));
        }
    };
    Ok(SqsConfig {
        endpoint_url: url,
        region: endpoint
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_SQS_REGION.to_owned()),
        access_key_id,
        secret_access_key,
        session_token,
        visibility_timeout: None,
    })
}

/// The Kafka client settings: the bootstrap servers (`url`/`urlFrom`) and
/// the workload's consumer group (`group`). SASL is not spoken yet, so a
/// registration with credentials is refused rather than connecting without
/// them.
fn kafka_config(
    id: &str,
    endpoint: &BrokerEndpoint,
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Result<KafkaConfig, SplitError> {
    let Some(url) = url else {
        return Err(SplitError::Value(format!(
            "queue {id}: a kafka brokerEndpoint needs url or urlFrom (host:port[,host:port])"
        )));
    };
    let Some(group) = endpoint.group.clone().filter(|g| !g.is_empty()) else {
        return Err(SplitError::Value(format!(
            "queue {id}: a kafka brokerEndpoint needs group (the consumer group the workload \
             reads the topic with)"
        )));
    };
    if user.is_some() || password.is_some() {
        return Err(SplitError::Value(format!(
            "queue {id}: kafka SASL credentials (usernameFrom/passwordFrom) are not supported yet"
        )));
    }
    let config = KafkaConfig::new(&url, group);
    if config.bootstrap.is_empty() {
        return Err(SplitError::Value(format!(
            "queue {id}: kafka url {url:?} names no host:port"
        )));
    }
    Ok(config)
}

/// `amqp://host/vhost` with `user:password@` put in (percent-encoded).
pub(super) fn with_credentials(uri: &str, user: &str, password: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{}:{}@{rest}", enc(user), enc(password))
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_replace_any_in_the_uri_and_are_encoded() {
        assert_eq!(
            with_credentials("amqp://rabbit:5672/%2f", "alice", "p@ss:w/rd"),
            "amqp://alice:p%40ss%3Aw%2Frd@rabbit:5672/%2f"
        );
        assert_eq!(
            with_credentials("amqp://guest:guest@rabbit/", "u", "p"),
            "amqp://u:p@rabbit/"
        );
    }

    #[test]
    fn an_sqs_queue_url_names_its_queue_and_temporary_queues_keep_the_url_form() {
        let (name, form) = QueueForm::parse(
            QueueBroker::Sqs,
            "http://sqs.local:5000/123456789012/orders.fifo",
        )
        .unwrap();
        assert_eq!(name, QueueName("orders.fifo".into()));
        assert_eq!(
            form.render(&QueueName("orders-remora-workload.fifo".into())),
            "http://sqs.local:5000/123456789012/orders-remora-workload.fifo"
        );
        let (name, form) = QueueForm::parse(QueueBroker::Sqs, "orders").unwrap();
        assert_eq!((name.0.as_str(), form), ("orders", QueueForm::Name));
        // Other brokers' names are names, whatever they look like.
        let (name, form) = QueueForm::parse(QueueBroker::Rabbitmq, "http://x/y").unwrap();
        assert_eq!((name.0.as_str(), form), ("http://x/y", QueueForm::Name));
        assert!(QueueForm::parse(QueueBroker::Sqs, "https://sqs.x/").is_err());
    }

    #[test]
    fn kafka_needs_bootstrap_servers_and_the_workloads_group() {
        let with_group = BrokerEndpoint {
            group: Some("orders-workers".into()),
            ..BrokerEndpoint::default()
        };
        let config = kafka_config(
            "q",
            &with_group,
            Some("kafka://k1:9092, k2:9092".into()),
            None,
            None,
        )
        .unwrap();
        assert_eq!(config.bootstrap, ["k1:9092", "k2:9092"]);
        assert_eq!(config.group, "orders-workers");
        let err = kafka_config("q", &with_group, None, None, None).unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        let err = kafka_config(
            "q",
            &BrokerEndpoint::default(),
            Some("k1:9092".into()),
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("group"), "{err}");
        let err = kafka_config(
            "q",
            &with_group,
            Some("k1:9092".into()),
            Some("u".into()),
            Some("p".into()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("SASL"), "{err}");
    }

    #[test]
    fn sqs_credentials_come_in_pairs() {
        let endpoint = BrokerEndpoint::default();
        let err = sqs_config("q", &endpoint, None, Some("id".into()), None).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let config = sqs_config(
            "q",
            &BrokerEndpoint {
                region: Some("eu-west-1".into()),
                ..BrokerEndpoint::default()
            },
            Some("http://127.0.0.1:5000".into()),
            Some("id".into()),
            Some("secret".into()),
        )
        .unwrap();
        assert_eq!(config.region, "eu-west-1");
        assert_eq!(
            config.endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(config.access_key_id, "id");
    }
}
