//! A WebSocket client connection over TCP or TLS (`ws://`, `wss://`), driven by the protocol
//! crate: the handshake, then whole messages in and out. The protocol client
//! ([`crate::Client`]) builds on it; tests and benchmarks use it directly.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::BytesMut;
use switchboard_protocol::{
    CloseFrame, Role,
    codec::{Decoder, DecoderConfig, Encoder, Message},
    frame::OpCode,
    handshake::{ClientAccepted, ClientHandshake},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::error::Error;

/// Options for [`WsStream::connect`].
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Subprotocols to offer.
    pub protocols: Vec<String>,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// A PEM file of CA certificates trusted for `wss://` besides the system's trust store
    /// (a server with a private CA). Default none.
    pub ca: Option<PathBuf>,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            protocols: Vec::new(),
            deflate: true,
            headers: Vec::new(),
            max_message_size: 16 << 20,
            ca: None,
        }
    }
}

/// A parsed `ws://host:port/path?query` (or `wss://`) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsUrl {
    /// `host:port` as written (port 80 when absent, 443 with `wss://`).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    /// The host without brackets or port (the name the server's certificate must carry).
    pub host: String,
    /// `wss://`: over TLS.
    pub tls: bool,
}

impl WsUrl {
    /// Parses a `ws://` or `wss://` URL.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let uri: http::Uri = url.parse().map_err(|e| Error::Url(format!("{url}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(Error::Url(format!("{url}: expected a ws:// or wss:// URL"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::Url(format!("{url}: no host")))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(WsUrl {
            authority,
            path_and_query,
            host: host.to_owned(),
            tls,
        })
    }
}

/// The connection under the WebSocket: TCP, or TLS over TCP.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TLS client trusting the system's store and the certificates of `ca`.
fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca {
        let shown = path.display();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::Url(format!("cannot read the CA file {shown}: {e:?}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Url(format!("{shown}: not PEM certificates: {e:?}")))?;
        if certs.is_empty() {
            return Err(Error::Url(format!("{shown} holds no certificate")));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::Url(format!("{shown}: not a usable CA certificate: {e}")))?;
        }
    }
    #[allow(deprecated, reason = "the ring provider is what this build has")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Url(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An open WebSocket connection (client role).
#[derive(Debug)]
pub struct WsStream {
    stream: Conn,
    decoder: Decoder,
    encoder: Encoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    accepted: ClientAccepted,
}

impl WsStream {
    /// Connects and completes the opening handshake.
    pub async fn connect(url: &str, options: &WsOptions) -> Result<Self, Error> {
        let url = WsUrl::parse(url)?;
        let tcp = TcpStream::connect(&url.authority).await?;
        tcp.set_nodelay(true)?;
        let mut stream = if url.tls {
            let config = tls_config(options.ca.as_deref())?;
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| Error::Url(format!("{}: {e}", url.host)))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Conn::Tls(Box::new(tls))
        } else {
            Conn::Plain(tcp)
        };
        let protocols: Vec<&str> = options.protocols.iter().map(String::as_str).collect();
        let headers: Vec<(&str, &str)> = options
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let hs = ClientHandshake::new(
            &url.authority,
            &url.path_and_query,
            &protocols,
            options.deflate,
            &headers,
        );
        stream.write_all(&hs.request).await?;
        stream.flush().await?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let accepted = loop {
            if stream.read_buf(&mut rbuf).await? == 0 {
                return Err(Error::Closed(None));
            }
            if let Some((accepted, used)) = hs.parse_response(&rbuf)? {
                let _ = rbuf.split_to(used);
                break accepted;
            }
            if rbuf.len() > 64 * 1024 {
                return Err(Error::Url("handshake response too long".into()));
            }
        };
        let config = DecoderConfig::default().with_max_message_size(options.max_message_size);
        Ok(WsStream {
            stream,
            decoder: Decoder::new(Role::Client, config, accepted.deflate),
            encoder: Encoder::new(Role::Client, accepted.deflate, 64),
            rbuf,
            wbuf: BytesMut::new(),
            accepted,
        })
    }

    /// What the server agreed to (subprotocol, deflate).
    pub fn accepted(&self) -> &ClientAccepted {
        &self.accepted
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send(OpCode::Text, text.as_bytes()).await
    }

    /// Sends a message with any opcode (Text, Binary, Ping, Pong).
    pub async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        self.encoder.encode(opcode, payload, &mut self.wbuf);
        self.flush().await
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Starts the close handshake.
    pub async fn close(&mut self, frame: Option<&CloseFrame>) -> Result<(), Error> {
        self.encoder.encode_close(frame, &mut self.wbuf);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Receives the next message of any kind, pings included, which are returned and *not*
    /// answered (send the pong yourself with [`WsStream::send`]).
    ///
    /// Cancel-safe, unlike [`WsStream::recv`]: it never writes, and dropping the future loses
    /// nothing (bytes already read stay buffered), so it can be one branch of a `select!`.
    /// `Ok(None)` when the TCP connection ended.
    pub async fn recv_any(&mut self) -> Result<Option<Message>, Error> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Some(msg));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Receives the next message; pings are answered automatically and not returned.
    /// `Ok(None)` when the TCP connection ended.
    pub async fn recv(&mut self) -> Result<Option<Message>, Error> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.rbuf)? {
                if let Message::Ping(p) = &msg {
                    let p = p.clone();
                    self.send(OpCode::Pong, &p).await?;
                    continue;
                }
                return Ok(Some(msg));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }
}
