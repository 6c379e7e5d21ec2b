//! Email over SMTP (lettre, rustls): one message per notification, its
//! Message-ID made from the notification's key, so a repeat delivery is
//! recognisable as such by mail systems.

use super::{error_chain, ChannelConfig};

pub type Mailer = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;

/// The SMTP transport of an email channel: `smtp://` plain (a local relay),
/// `smtp://…?tls=required` STARTTLS, `smtps://` TLS; rustls either way.
pub fn mailer(c: &ChannelConfig, password: Option<&str>) -> Result<Mailer, String> {
    let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&c.url)
        .map_err(|e| format!("{:?}: {e}", c.url))?
        .timeout(Some(c.timeout));
    if let (Some(user), Some(pass)) = (&c.username, password) {
        b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            pass.to_owned(),
        ));
    }
    Ok(b.build())
}

/// Sends `text` (its first line the subject) for the notification `key`.
pub async fn send(
    cfg: &ChannelConfig,
    mailer: &Mailer,
    key: &str,
    text: String,
) -> Result<(), String> {
    use lettre::AsyncTransport;
    let subject = text.lines().next().unwrap_or("RoomGuard").to_owned();
    let from = cfg.from.as_deref().unwrap_or("");
    let mut b = lettre::Message::builder()
        .from(from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject)
        .message_id(Some(format!(
            "<{}.{}@roomguard>",
            key.replace(':', "."),
            cfg.id
        )))
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in &cfg.to {
        b = b.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    let message = b.body(text).map_err(|e| e.to_string())?;
    mailer
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {}", cfg.id, error_chain(&e)))
}
