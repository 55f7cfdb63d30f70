//! `imagegen flash`: the cards there are, the checks, the question, the write.

use armfleet_cli::draw::{Drawer, Mode};
use armfleet_cli::{Failure, out};
use imagegen::flash::FlashError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How `imagegen flash` was asked to write.
pub(crate) struct FlashHow {
    pub yes: bool,
    pub to_file: bool,
    pub dry_run: bool,
    pub quiet: bool,
}

/// `imagegen flash IMG` with no card: the removable disks it would accept, then an error line
/// saying to pick one (nothing is written without a named target).
pub(crate) fn list_cards(image: &Path) -> Result<(), Failure> {
    let cards = imagegen::flash::removable_disks();
    if cards.is_empty() {
        return Err(Failure::usage(format!(
            "no removable disk found (SD card readers, USB sticks): insert the card, then `imagegen flash {} /dev/sdX`; to write a file use `--to-file FILE`",
            image.display()
        )));
    }
    out::println(&format!(
        "{:<16} {:>9}  {:<5} {:<28} MOUNTED",
        "DISK", "SIZE", "BUS", "MODEL"
    ));
    for c in &cards {
        out::println(&format!(
            "{:<16} {:>9}  {:<5} {:<28} {}",
            c.path.display(),
            bootstrap::progress::human_bytes(c.size),
            c.bus,
            if c.model.is_empty() { "-" } else { &c.model },
            if c.mounted.is_empty() {
                "no".to_owned()
            } else {
                format!("{} (unmount first)", c.mounted.join(", "))
            }
        ));
    }
    Err(Failure::usage(format!(
        "no card given: run `imagegen flash {} DISK` with one of the disks above",
        image.display()
    )))
}

pub(crate) fn flash(
    image: &Path,
    device: &Path,
    how: FlashHow,
    bmap: Option<PathBuf>,
) -> Result<(), Failure> {
    let FlashHow {
        yes,
        to_file,
        dry_run,
        quiet,
    } = how;
    let bmap_path = bmap.unwrap_or_else(|| PathBuf::from(format!("{}.bmap", image.display())));
    let xml = std::fs::read_to_string(&bmap_path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the bmap {}: {e}: it is made next to the image by imagegen; pass --bmap FILE",
            bmap_path.display()
        ))
    })?;
    let map = imagegen::bmap::Bmap::parse(&xml, &bmap_path)?;
    let kind = if to_file {
        imagegen::flash::TargetKind::File
    } else {
        imagegen::flash::TargetKind::Device
    };
    let sources = imagegen::flash::Sources {
        image,
        bmap: &bmap_path,
    };
    let target = imagegen::flash::preflight(device, kind, sources, map.image_size)?;
    imagegen::flash::check_image_matches(image, &map)?;
    let what = {
        if target.block_device {
            let model = if target.model.is_empty() {
                &target.kernel_name
            } else {
                &target.model
            };
            format!(
                "{} ({model}, {} MiB)",
                target.path.display(),
                target.size >> 20
            )
        } else {
            format!("the file {}", target.path.display())
        }
    };
    if dry_run {
        out::println(&format!(
            "dry run: would write {} ({} bytes in {} ranges of {} bytes) to {what}, then read them back; nothing written",
            image.display(),
            map.mapped_bytes(),
            map.ranges.len(),
            map.image_size
        ));
        return Ok(());
    }
    if !yes {
        eprint!(
            "Write {} ({} MiB of data) to {what}? Everything on it is lost. [y/N] ",
            image.display(),
            map.mapped_bytes() >> 20
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).ok();
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(FlashError::Cancelled.into());
        }
    }
    let drawer = Drawer::new(Mode::detect(quiet));
    let progress = drawer.sink(None);
    let started = std::time::Instant::now();
    let flashed = imagegen::flash::flash(image, &map, &target, &progress);
    progress.finish(flashed.is_ok());
    let r = flashed?;
    if quiet {
        return Ok(());
    }
    out::println(&format!(
        "flashed {} to {}: {} bytes written in {} ranges ({:.1} s), read back and verified",
        image.display(),
        device.display(),
        r.bytes_written,
        r.ranges,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
