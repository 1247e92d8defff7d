// Reading a prefix back from disk or prefilling it again (src/engine/load-or-prefill.ts), with the
// H100 measurements of bench/results/gpu-h100-2026-12-06b-kv: Claude Code's 12,960-token prefix,
// 5.8 GB of fp16 KV read back in ~1.9 s, against a prefill of ~11,500 tokens a second.
import { expect, test } from "bun:test";
import { LoadOrPrefill } from "../../src/engine/load-or-prefill";

const PREFIX_TOKENS = 12_960;
const FP16_BYTES = PREFIX_TOKENS * 384 * 1024;

test("on the H100 a 13K-token fp16 prefix is prefilled again, not read back", () => {
  const choice = new LoadOrPrefill("gpu");
  choice.recordLoad(FP16_BYTES, 1900);
  choice.recordPrefill(2048, 178);
  expect(choice.worthLoading(FP16_BYTES, PREFIX_TOKENS)).toBe(false);
  expect(choice.skipped).toBe(1);
  // Asking ahead (the disk store's writes) counts nothing.
  expect(choice.wouldLoad(FP16_BYTES, PREFIX_TOKENS)).toBe(false);
  expect(choice.skipped).toBe(1);
});

test("on a CPU (or before any measurement on one) the disk wins", () => {
  const choice = new LoadOrPrefill("cpu");
  expect(choice.worthLoading(FP16_BYTES, PREFIX_TOKENS)).toBe(true);
  // SmolLM2 on this machine: ~300 tokens a second; its KV is 90 KiB a token (fp32).
  choice.recordPrefill(512, 1700);
  expect(choice.worthLoading(PREFIX_TOKENS * 90 * 1024, PREFIX_TOKENS)).toBe(true);
});

test("measurements replace the prior, then move an average; tiny samples are ignored", () => {
  const choice = new LoadOrPrefill("gpu");
  choice.recordPrefill(10, 1000); // too few tokens to say anything
  expect(choice.prefillMeasured).toBe(0);
  choice.recordPrefill(1000, 1000);
  expect(choice.rates.prefillTokensPerS).toBe(1000);
  choice.recordPrefill(2000, 1000);
  expect(choice.rates.prefillTokensPerS).toBeCloseTo(1300, 6);
});
