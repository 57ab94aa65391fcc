//! `mkpatch inspect --map FILE`: the change map as SVG, rendered by
//! headless Chromium (Debian's /usr/bin/chromium, `scripts/setup-deps
//! wasm`). The new image is four equal quarters (unchanged, moved, new
//! data, zeros); the screenshot must be the size the SVG declares, and the
//! cells of each quarter the page's colour for that kind.

use std::fs;
use std::path::Path;
use std::process::Command;

use anypatch_tests::bin;

const QUARTER: usize = 1 << 20;

/// Old: 4 MiB of noise. New: the first MiB unchanged, then old's last MiB
/// (moved), then a MiB of new noise, then a MiB of zeros.
fn pair(dir: &Path) -> (String, String) {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let old = noise(4 * QUARTER);
    let mut new = old[..QUARTER].to_vec();
    new.extend_from_slice(&old[3 * QUARTER..]);
    new.extend(noise(QUARTER));
    new.resize(4 * QUARTER, 0);
    let (o, n) = (dir.join("old.img"), dir.join("new.img"));
    fs::write(&o, old).expect("write old");
    fs::write(&n, new).expect("write new");
    (o.display().to_string(), n.display().to_string())
}

/// The `width` and `height` the SVG's root element declares.
fn declared_size(svg: &str) -> (u32, u32) {
    let attr = |name: &str| -> u32 {
        let key = format!(" {name}=\"");
        let at = svg.find(&key).expect("attribute") + key.len();
        svg[at..]
            .split('"')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    (attr("width"), attr("height"))
}

/// Screenshot of `svg` at its own size.
fn render(svg: &Path, size: (u32, u32), png: &Path) -> (u32, u32, Vec<u8>) {
    let o = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .expect("run /usr/bin/chromium (scripts/setup-deps wasm installs it)");
    assert!(
        o.status.success() && png.is_file(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        fs::File::open(png).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    // RGB of every pixel.
    let rgb = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, rgb)
}

#[test]
fn map_svg_renders_each_kind_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair(dir.path());
    let patch = dir.path().join("p.bin");
    let svg = dir.path().join("map.svg");
    let o = Command::new(bin("mkpatch"))
        .args(["-q", &old, &new, "-o"])
        .arg(&patch)
        .output()
        .expect("mkpatch");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin("mkpatch"))
        .args(["inspect", "--map"])
        .arg(&svg)
        .arg(&patch)
        .output()
        .expect("mkpatch inspect");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = fs::read_to_string(&svg).expect("the map was written");
    let size = declared_size(&text);
    assert_eq!(size.0, 768, "128 cells of 6 px, as the page's canvas");

    let (w, h, rgb) = render(&svg, size, &dir.path().join("map.png"));
    assert_eq!((w, h), size, "the screenshot is the SVG's size");
    let pixel = |x: u32, y: u32| -> [u8; 3] {
        let i = 3 * (y * w + x) as usize;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    // 4096 cells of 1 KiB: each quarter is 1024 cells, 8 rows of 128.
    // Sample the centre of every 5th cell of rows 2-5 of each quarter,
    // away from the edges where one kind meets the next.
    let kinds: [(&str, [u8; 3]); 4] = [
        ("unchanged", [0xd8, 0xdd, 0xe4]),
        ("moved", [0x25, 0x63, 0xeb]),
        ("data", [0xea, 0x58, 0x0c]),
        ("zero", [0x1f, 0x29, 0x37]),
    ];
    for (q, (name, want)) in kinds.iter().enumerate() {
        for row in 2..6u32 {
            for col in (0..128u32).step_by(5) {
                let y = (q as u32 * 8 + row) * 6 + 2;
                let got = pixel(col * 6 + 2, y);
                let close = got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= 4);
                assert!(
                    close,
                    "{name} quarter, cell row {row} col {col}: pixel {got:02x?}, want {want:02x?}"
                );
            }
        }
    }
    // The legend under the grid is drawn: dark text pixels below the grid.
    let grid = 32 * 6;
    let inked = (grid..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| pixel(x, y).iter().all(|&c| c < 0x80))
        .count();
    assert!(inked > 500, "no legend text: {inked} dark pixels");
}

/// `--map` is an output like `-o`: it is refused before anything is read
/// when it would destroy the patch (by name, through a link, or as the file
/// stdin reads), a key, a directory or a disk; a map through a link
/// replaces the file the link points to, never the link.
#[test]
fn map_never_overwrites_its_patch_or_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (old, new) = pair(d);
    let patch = d.join("p.bin");
    let o = Command::new(bin("mkpatch"))
        .args(["-q", &old, &new, "-o"])
        .arg(&patch)
        .output()
        .expect("mkpatch");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = fs::read(&patch).expect("read the patch");
    std::os::unix::fs::symlink("p.bin", d.join("link")).expect("symlink");
    let key = d.join("release.pub");
    let o = Command::new(bin("mkpatch"))
        .args(["keygen", "-o"])
        .arg(d.join("release.key"))
        .output()
        .expect("keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key_text = fs::read(&key).expect("keygen writes the .pub beside the key");

    let inspect = |map: &Path, stdin_patch: bool| {
        let mut c = Command::new(bin("mkpatch"));
        c.args(["inspect", "-q", "--map"]).arg(map);
        if stdin_patch {
            c.arg("-")
                .stdin(fs::File::open(&patch).expect("open the patch"));
        } else {
            c.arg(&patch);
        }
        c.output().expect("mkpatch inspect")
    };
    for (map, stdin_patch, says) in [
        (patch.clone(), false, "is PATCH"),
        (d.join("link"), false, "is PATCH"),
        (patch.clone(), true, "is PATCH"),
        (key.clone(), false, "public key"),
        (d.to_path_buf(), false, "is a directory"),
    ] {
        let o = inspect(&map, stdin_patch);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--map {} was accepted", map.display());
        assert!(err.contains(says), "--map {}: {err}", map.display());
        assert!(err.contains("--map"), "the refusal names the option: {err}");
    }
    assert_eq!(
        fs::read(&patch).expect("read"),
        bytes,
        "the patch is intact"
    );
    assert_eq!(fs::read(&key).expect("read"), key_text, "the key is intact");

    // Through a link to another file: that file gets the map, the link stays.
    fs::write(d.join("old.svg"), "stale").expect("write");
    std::os::unix::fs::symlink("old.svg", d.join("map-link")).expect("symlink");
    let o = inspect(&d.join("map-link"), false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::symlink_metadata(d.join("map-link"))
        .expect("the link")
        .file_type()
        .is_symlink());
    let svg = fs::read_to_string(d.join("old.svg")).expect("the map");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    let leftovers: Vec<_> = fs::read_dir(d)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
