//! `neoflix camera list|set`: what the installer needs to choose and tune a room's camera, over
//! `neoflix-camera`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use neoflix_camera::{Camera, ControlSetting};
// Device names and menu entries come from drivers: printed with control characters escaped.
use neoflix_logging::escape_controls as printable;

/// `neoflix camera ...`
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Every V4L2 capture device: its stable names, serial number, formats with sizes and frame
    /// rates, and controls.
    List {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Tries controls live, e.g. `power_line_frequency=50hz exposure=auto focus=30`; prints
    /// each control's value after. Put the ones that suit the room in `[capture.controls]`.
    Set {
        /// The camera: `/dev/v4l/by-id/...`, `/dev/videoN`.
        device: PathBuf,
        /// `NAME=VALUE`: `auto`, a number, `on`/`off`, or a menu entry's name.
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

/// Runs a `neoflix camera` command.
pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::List { json } => {
            let (cameras, errors) = neoflix_camera::list();
            for e in &errors {
                eprintln!("neoflix: {}", printable(&e.to_string()));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&cameras)?);
            } else if cameras.is_empty() {
                println!("no V4L2 capture device found");
            } else {
                for c in &cameras {
                    print!("{}", text(c));
                }
            }
            Ok(())
        }
        Action::Set { device, settings } => {
            let settings = settings
                .iter()
                .map(|s| ControlSetting::parse(s).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let after = neoflix_camera::set_controls(&device, &settings)
                .with_context(|| format!("setting controls of {}", device.display()))?;
            if after.is_empty() {
                bail!("nothing was set");
            }
            for (name, value) in after {
                println!("{name} = {value}");
            }
            Ok(())
        }
    }
}

/// The text listing of one camera.
fn text(c: &Camera) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: {} ({}, {})",
        c.path.display(),
        printable(&c.card),
        printable(&c.driver),
        printable(&c.bus)
    );
    for n in &c.stable_names {
        let _ = writeln!(o, "  stable name: {}", printable(&n.display().to_string()));
    }
    if let Some(s) = &c.serial {
        let _ = writeln!(o, "  serial: {}", printable(s));
    }
    for f in &c.formats {
        let _ = writeln!(
            o,
            "  {} ({}):",
            printable(&f.fourcc),
            printable(&f.description)
        );
        for s in &f.sizes {
            let size = match s.up_to {
                None => format!("{}x{}", s.width, s.height),
                Some(u) => format!(
                    "{}x{} to {}x{} in steps of {}x{}",
                    s.width, s.height, u.max_width, u.max_height, u.step_width, u.step_height
                ),
            };
            let mut fps: Vec<String> = s.fps.iter().map(|r| format!("{r}")).collect();
            if let Some((lo, hi)) = s.fps_range {
                fps.push(format!("any of {lo}-{hi}"));
            }
            let _ = writeln!(o, "    {size} at {} fps", fps.join(", "));
        }
    }
    if !c.controls.is_empty() {
        let _ = writeln!(o, "  controls:");
    }
    for k in &c.controls {
        let value = k.value.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let mut line = format!(
            "    {} ({}) = {value}, {}..{}, default {}",
            printable(&k.name),
            k.kind,
            k.min,
            k.max,
            k.default
        );
        if !k.menu.is_empty() {
            let entries: Vec<String> = k
                .menu
                .iter()
                .map(|(v, n)| format!("{v}: {}", printable(n)))
                .collect();
            line.push_str(&format!(" [{}]", entries.join(", ")));
        }
        if k.inactive {
            line.push_str(" (inactive)");
        }
        if k.read_only {
            line.push_str(" (read-only)");
        }
        let _ = writeln!(o, "{line}");
    }
    o
}
