use std::time::Instant;
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};

fn files() -> Vec<(String, usize, Vec<Vec<u8>>)> {
    let mut v = vec![];
    for n in [300, 1000, 3000] {
        for seed in 1..=4 {
            let name = format!("/tmp/p/chunks_{n}_{seed}.bin");
            let b = std::fs::read(&name).unwrap();
            let z = u32::from_be_bytes(b[0..4].try_into().unwrap()) as usize;
            let mut chunks = vec![];
            let mut i = 4;
            while i < b.len() {
                let l = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
                chunks.push(b[i + 4..i + 4 + l].to_vec());
                i += 4 + l;
            }
            v.push((name, z, chunks));
        }
    }
    v
}

fn run(params: &[CParameter], chunks: &[Vec<u8>]) -> usize {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::SrcSizeHint(total as u32))
        .unwrap();
    for p in params {
        cctx.set_parameter(*p).unwrap();
    }
    let mut size = 0;
    let mut out: Vec<u8> = Vec::with_capacity(total + 4096);
    for c in chunks {
        out.clear();
        let mut input = InBuffer::around(c);
        let mut output = OutBuffer::around(&mut out);
        loop {
            let r = cctx
                .compress_stream2(
                    &mut output,
                    &mut input,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .unwrap();
            if r == 0 {
                break;
            }
        }
        size += out.len();
    }
    size
}

fn main() {
    use zstd::zstd_safe::{ParamSwitch, Strategy};
    let files = files();
    let mut results = vec![];
    let mut configs: Vec<(String, Vec<CParameter>)> = vec![];
    for level in [6, 7, 8, 9] {
        configs.push((
            format!("L{level}"),
            vec![CParameter::CompressionLevel(level)],
        ));
        configs.push((
            format!("L{level} norow"),
            vec![
                CParameter::CompressionLevel(level),
                CParameter::UseRowMatchFinder(ParamSwitch::Disable),
            ],
        ));
    }
    for strat in [
        Strategy::ZSTD_lazy,
        Strategy::ZSTD_lazy2,
        Strategy::ZSTD_btlazy2,
        Strategy::ZSTD_greedy,
    ] {
        for sl in [1u32, 2, 3, 4] {
            for mm in [4u32, 5, 6] {
                for tl in [0u32, 16, 64] {
                    for row in [true, false] {
                        let mut p = vec![
                            CParameter::CompressionLevel(7),
                            CParameter::Strategy(strat),
                            CParameter::SearchLog(sl),
                            CParameter::MinMatch(mm),
                        ];
                        if tl > 0 {
                            p.push(CParameter::TargetLength(tl));
                        }
                        if !row {
                            p.push(CParameter::UseRowMatchFinder(ParamSwitch::Disable));
                        }
                        configs.push((format!("{strat:?} sl{sl} mm{mm} tl{tl} row{row}"), p));
                    }
                }
            }
        }
    }
    for (name, p) in &configs {
        let mut worst = f64::MAX;
        let mut time = 0f64;
        let mut ratio_sum = 0f64;
        for (_, z, chunks) in &files {
            let budget = *z as f64 - 48.0 - 36.0 * chunks.len() as f64;
            let size = run(p, chunks);
            let margin = (budget - size as f64) / *z as f64;
            worst = worst.min(margin);
            ratio_sum += (size as f64 + 80.0 + 36.0 * chunks.len() as f64) / (*z as f64 + 32.0);
            let mut ts = vec![];
            for _ in 0..7 {
                let t0 = Instant::now();
                run(p, chunks);
                ts.push(t0.elapsed().as_secs_f64());
            }
            ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
            time += ts[3] / chunks.iter().map(|c| c.len()).sum::<usize>() as f64 * 1e9;
        }
        results.push((
            name.clone(),
            worst,
            ratio_sum / files.len() as f64,
            time / files.len() as f64,
        ));
    }
    results.sort_by(|a, b| a.3.partial_cmp(&b.3).unwrap());
    for r in results
        .iter()
        .filter(|r| r.1 > 0.0 || r.0.starts_with('L'))
        .take(40)
    {
        println!(
            "{:45} worst margin {:+.4} mean ratio {:.4} ns/byte {:.2}",
            r.0, r.1, r.2, r.3
        );
    }
}
