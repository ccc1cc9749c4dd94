//! A plain WebSocket client connection over TCP, driven by the protocol crate: the handshake,
//! then whole messages in and out. The protocol client ([`crate::Client`]) builds on it; tests
//! and benchmarks use it directly.

use bytes::BytesMut;
use switchboard_protocol::{
    CloseFrame, Role,
    codec::{Decoder, DecoderConfig, Encoder, Message},
    frame::OpCode,
    handshake::{ClientAccepted, ClientHandshake},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
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
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            protocols: Vec::new(),
            deflate: true,
            headers: Vec::new(),
            max_message_size: 16 << 20,
        }
    }
}

/// A parsed `ws://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port` as written (port 80 when absent).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

impl WsUrl {
    /// Parses a `ws://` URL (`wss://` is not supported by this client yet).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let uri: http::Uri = url.parse().map_err(|e| Error::Url(format!("{url}: {e}")))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(Error::Url(format!(
                    "{url}: wss:// is not supported yet; use ws://"
                )));
            }
            _ => return Err(Error::Url(format!("{url}: expected a ws:// URL"))),
        }
        let host = uri
            .host()
            .ok_or_else(|| Error::Url(format!("{url}: no host")))?;
        let port = uri.port_u16().unwrap_or(80);
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
        })
    }
}

/// An open WebSocket connection (client role).
#[derive(Debug)]
pub struct WsStream {
    stream: TcpStream,
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
        let mut stream = TcpStream::connect(&url.authority).await?;
        stream.set_nodelay(true)?;
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
        Ok(())
    }

    /// Starts the close handshake.
    pub async fn close(&mut self, frame: Option<&CloseFrame>) -> Result<(), Error> {
        self.encoder.encode_close(frame, &mut self.wbuf);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.wbuf).await?;
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
