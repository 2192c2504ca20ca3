"""One line about a `fiddler bench` JSON for deploy/gpu-call.sh's log: decode windows, GPU memory, the lane ceiling."""
import json
import sys

j = json.load(open(sys.argv[1]))
ceiling = j.get("lane_ceiling") or {}
executor = j.get("executor_ms_per_layer") or {}
print("TTFT right after a prompt of the same length {} s; windows {}; GPU memory {} GiB (at start {}); ceiling {} tok/s, fraction {}; CPU lane ended last {} (target {})".format(
    "/".join(str(v) for v in (j.get("ttft_warm_s") or {}).values()), ", ".join(str(x) for x in j.get("decode_tok_s_runs", [])), j.get("gpu_memory_used_gib"), j.get("gpu_memory_at_start_gib"),
    ceiling.get("decode_tok_s"), ceiling.get("decode_fraction"), executor.get("cpu_ended_last_share"), j.get("cpu_ended_last_target")))
print("  warm-up {} s (prompts {}); batch factors (CPU alone, beside copies, copies, layers) {}; seed {} tok/s, ratio {}".format(
    j.get("warmup_s"), j.get("warmup_prompt_tokens"), j.get("batch_factors"), j.get("baseline_seed_decode_tok_s"), j.get("speedup_vs_seed")))
if j.get("gc_decode") or j.get("kernel_decode"):
    print("  decode windows: .NET GC {}; SIMD kernel regions {} (CPU lane {} GB/s); CPU pool {}".format(j.get("gc_decode"), j.get("kernel_decode"), j.get("cpu_gb_s"), j.get("pool_decode")))
kd = j.get("kernel_decode") or {}
if "huge_page_gb_s" in kd:
    print("  kernel in the same windows: experts in huge pages {} GB/s ({} regions), on 4 KiB pages {} GB/s ({} regions)".format(
        kd["huge_page_gb_s"], kd["huge_page_regions"], kd.get("small_page_gb_s", "-"), kd.get("small_page_regions", 0)))
hr = j.get("host_expert_read_gb_s")
if hr:
    print("  host experts read alone ({} experts, {} passes): min {} p10 {} median {} p90 {} max {} GB/s; pass correlation {};"
          " probe's first 12 {} vs rest {}; by position {}".format(hr["experts"], hr["passes"], hr["min"], hr["p10"], hr["median"], hr["p90"], hr["max"],
                                                                   hr["pass_correlation"], hr["first_12_median"], hr["rest_median"], hr["median_by_experts_in_order"]))
ab = j.get("ab_balance")
if ab:
    print("  balance on vs off in this process, {} pairs: on {}, off {} tok/s, per pair {} %, median {} %; CPU last {} vs {};"
          " hand-off {} vs {} ms".format(ab["pairs"], ab["on_tok_s"], ab["off_tok_s"], ab["pair_diff_pct"], ab["median_diff_pct"],
                                        ab["on_cpu_ended_last"], ab["off_cpu_ended_last"], ab["on_handoff_host_ms"], ab["off_handoff_host_ms"]))
abt = j.get("ab_cpu_threads")
if abt:
    print("  CPU pool on {} vs {} participants in this process, {} pairs: {} vs {} tok/s, per pair (fewer/full) {} %, median {} %;"
          " learned CPU factor {} vs {}; hand-off {} vs {} ms".format(
              abt["threads"][0], abt["threads"][1], abt["pairs"], abt["full_tok_s"], abt["fewer_tok_s"], abt["pair_diff_pct"],
              abt["median_diff_pct"], abt["cpu_factor"][0], abt["cpu_factor"][1], abt["full_handoff_host_ms"], abt["fewer_handoff_host_ms"]))
abk = j.get("ab_kernel")
if abk:
    print("  CPU kernel {} vs {} in this process, {} pairs: {} vs {} tok/s, per pair (other/configured) {} %, median {} %;"
          " kernel {} vs {} GB/s; learned CPU factor {} vs {}".format(
              abk["settings"][0], abk["settings"][1], abk["pairs"], abk["configured_tok_s"], abk["other_tok_s"], abk["pair_diff_pct"],
              abk["median_diff_pct"], abk["configured_kernel_gb_s"], abk["other_kernel_gb_s"], abk["cpu_factor"][0], abk["cpu_factor"][1]))
if j.get("read_scales"):
    print("  read scales at start: {}".format(j.get("read_scales")))
abs_ = j.get("ab_read_scales")
if abs_:
    print("  read scales on vs off in this process{}, {} pairs: {} vs {} tok/s, per pair (on/off) {} %, median {} %; kernel {} vs {} GB/s; learned CPU factor {} vs {}".format(
        " (forced: the engine does not plan by them on this host)" if abs_.get("forced") else "", abs_["pairs"], abs_["with_tok_s"], abs_["without_tok_s"], abs_["pair_gain_pct"], abs_["median_gain_pct"],
        abs_["with_kernel_gb_s"], abs_["without_kernel_gb_s"], abs_["cpu_factor"][0], abs_["cpu_factor"][1]))
abp = j.get("ab_pipeline")
if abp:
    print("  decode pipeline on vs off in this process, {} pairs: {} vs {} tok/s, per pair (on/off) {} %, median {} %".format(
        abp["pairs"], abp["pipelined_tok_s"], abp["stepped_tok_s"], abp["pair_gain_pct"], abp["median_gain_pct"]))
if j.get("actor_overhead_pct") is not None:
    print("  actors ({} CPU participants): generator {} vs actors {} tok/s (rounds {} / {}), overhead {} %; GPU memory before the rounds and after each {} GiB".format(
        j.get("actor_cpu_threads"), j.get("decode_tok_s_generator"), j.get("decode_tok_s_actors"), j.get("decode_tok_s_generator_runs"), j.get("decode_tok_s_actors_runs"),
        j.get("actor_overhead_pct"), j.get("gpu_memory_actor_rounds_gib")))
    aps = j.get("actor_path_ms_per_layer")
    if aps:
        print("  per layer, direct vs actors (ms): " + ", ".join("{} {} / {}".format(k, aps["direct"][k], aps["actors"][k]) for k in aps["direct"]))
cw = j.get("ceiling_windows")
if cw:
    print("  ceiling windows ({} rounds): tok/s vs ceiling r {}, kernel vs probe r {}; tok/s {}, ceiling {}, fraction {}, kernel of probe {}".format(
        len(cw["rounds"]), cw.get("tok_s_vs_ceiling_r"), cw.get("kernel_vs_probe_r"), cw.get("tok_s"), cw.get("ceiling_tok_s"), cw.get("fraction"), cw.get("kernel_of_probe")))
    print("    per round (tok/s, ceiling, fraction, kernel GB/s, probe read beside copies GB/s, alone GB/s): " + "; ".join(
        "{} {} {} {} {} {}".format(r["tok_s"], r["ceiling_tok_s"], r["fraction"], r["kernel_gb_s"], r["cpu_read_with_h2d_gb_s"], r["cpu_read_gb_s"]) for r in cw["rounds"]))
