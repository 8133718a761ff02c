//! A real browser for tests: Debian's `chromium`, headless, driven over the W3C WebDriver
//! protocol through `chromedriver` on a free port (both installed by `deploy/local/stack.sh`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::request;
use crate::servers::{find_binary, free_port, wait_for_port};

pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

/// A found element's WebDriver reference.
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts `chromedriver` and a headless `chromium` session.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_bin = find_binary("chromedriver")?;
        let chromium = find_binary("chromium")?;
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(port, Duration::from_secs(20))?;
        let addr = format!("127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps)).await?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id from chromedriver: {v}"))?
            .to_owned();
        Ok(b)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let res = request(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            data.as_bytes(),
        )
        .await?;
        let v: Value = serde_json::from_slice(&res.body)
            .map_err(|e| anyhow::anyhow!("webdriver {path}: {e}: {}", res.text()))?;
        if res.status >= 400 {
            anyhow::bail!("webdriver {method} {path}: {}", v["value"]);
        }
        Ok(if v.get("sessionId").is_some() {
            v
        } else {
            v["value"].clone()
        })
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let v = self
            .call(
                "POST",
                &self.s("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(Element(
            v[ELEMENT_KEY]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no element {css}: {v}"))?
                .to_owned(),
        ))
    }

    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let v = self
            .call(
                "POST",
                &self.s("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/click", e.0)),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Waits (up to 20 s) until an element matching `css` has text containing `needle`: after a
    /// click that navigates, the old page answers until the new one has loaded.
    pub async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(e) = self.find(css).await {
                if let Ok(t) = self.text(&e).await {
                    if t.contains(needle) {
                        return Ok(t);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("no {css} with text {needle:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Finds `css` and clicks it, finding it again if the page replaced it in between (a live
    /// part re-rendered by the server).
    pub async fn click_css(&self, css: &str) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..10 {
            let e = self.find(css).await?;
            match self.click(&e).await {
                Ok(()) => return Ok(()),
                Err(err) if err.to_string().contains("stale element") => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("cannot click {css}")))
    }

    pub async fn type_into(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/value", e.0)),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        let v = self
            .call("GET", &self.s(&format!("/element/{}/text", e.0)), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    pub async fn title(&self) -> anyhow::Result<String> {
        let v = self.call("GET", &self.s("/title"), None).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` in the page and returns its value.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let v = self.call("GET", &self.s("/screenshot"), None).await?;
        let b64 = v.as_str().unwrap_or_default();
        Ok(data_encoding::BASE64.decode(b64.as_bytes())?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes chromium; then the driver goes.
        use std::io::{Read as _, Write as _};
        if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session, self.addr
            );
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
