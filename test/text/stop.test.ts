import { describe, expect, test } from "bun:test";
import { StopMatcher } from "../../src/text/stop.ts";

/** Feed chunks; returns everything emitted (flushed at the end when no stop) and the stop hit. */
function run(stops: string[], chunks: string[]): { text: string; stop?: string; emitted: string[] } {
  const matcher = new StopMatcher(stops);
  const emitted: string[] = [];
  for (const chunk of chunks) {
    const result = matcher.push(chunk);
    emitted.push(result.text);
    if (result.stop !== undefined) return { text: emitted.join(""), stop: result.stop, emitted };
  }
  emitted.push(matcher.flush());
  return { text: emitted.join(""), emitted };
}

/** Every way of cutting `text` into two or three chunks. */
function splits(text: string): string[][] {
  const out: string[][] = [[text]];
  for (let i = 0; i <= text.length; i++) {
    out.push([text.slice(0, i), text.slice(i)]);
    for (let j = i; j <= text.length; j++) out.push([text.slice(0, i), text.slice(i, j), text.slice(j)]);
  }
  return out;
}

describe("StopMatcher", () => {
  test("no stop strings: text passes straight through", () => {
    expect(run([], ["a", "b"]).emitted).toEqual(["a", "b", ""]);
  });

  test("holds back a possible start of a stop string, releases it when it is not", () => {
    const matcher = new StopMatcher(["</answer>"]);
    expect(matcher.push("The end</")).toEqual({ text: "The end" });
    expect(matcher.pending).toBe("</");
    expect(matcher.push("b> more")).toEqual({ text: "</b> more" });
    expect(matcher.pending).toBe("");
  });

  test("a completed stop string: text before it is emitted, it and everything after are not", () => {
    const matcher = new StopMatcher(["STOP"]);
    expect(matcher.push("abc ST")).toEqual({ text: "abc " });
    expect(matcher.push("OP and more")).toEqual({ text: "", stop: "STOP" });
    expect(matcher.stopped).toBe(true);
    expect(matcher.push("ignored")).toEqual({ text: "" });
    expect(matcher.flush()).toBe("");
  });

  test("a stop string inside a single chunk", () => {
    expect(run(["\n\n"], ["one\n\ntwo"])).toEqual({ text: "one", stop: "\n\n", emitted: ["one"] });
  });

  test("a stop string at the very start", () => {
    expect(run(["<|end|>"], ["<|end|>tail"])).toEqual({ text: "", stop: "<|end|>", emitted: [""] });
  });

  test("the earliest stop wins; at the same position the longer one is reported", () => {
    expect(run(["world", "lo"], ["hello world"])).toMatchObject({ text: "hel", stop: "lo" });
    expect(run(["ab", "abc"], ["xabcd"])).toMatchObject({ text: "x", stop: "abc" });
  });

  test("held text is released at the end of the stream", () => {
    const matcher = new StopMatcher(["###"]);
    expect(matcher.push("total ##")).toEqual({ text: "total " });
    expect(matcher.flush()).toBe("##");
  });

  test("overlapping partial matches (stop 'aab' after 'aaa')", () => {
    const matcher = new StopMatcher(["aab"]);
    expect(matcher.push("aaa")).toEqual({ text: "a" });
    expect(matcher.pending).toBe("aa");
    expect(matcher.push("b!")).toEqual({ text: "", stop: "aab" });
  });

  test("the longest possible prefix over all stop strings is held", () => {
    const matcher = new StopMatcher(["xyz", "yz!"]);
    expect(matcher.push("..xy")).toEqual({ text: ".." });
    expect(matcher.pending).toBe("xy");
    expect(matcher.push("z")).toEqual({ text: "", stop: "xyz" });
  });

  test("empty and duplicate stop strings are ignored", () => {
    expect(run(["", "END", "END"], ["a", "b"]).text).toBe("ab");
  });

  test("non-ASCII stop strings and surrogate pairs", () => {
    expect(run(["\ud83e\udd99\ud83e\udd99"], ["a \ud83e\udd99", "\ud83e\udd99 b"])).toMatchObject({
      text: "a ",
      stop: "\ud83e\udd99\ud83e\udd99",
    });
    expect(run(["\u3002\u3002"], ["\u4f60\u597d\u3002", "\u4e16\u754c"]).text).toBe("\u4f60\u597d\u3002\u4e16\u754c");
  });

  test("whatever the chunking, the output is the text before the first stop", () => {
    const cases: [string[], string, string][] = [
      [["<|end|>"], "answer<|end|>junk", "answer"],
      [["\n\nUser:", "</s>"], "Hi there.\n\nUse this\n\nUser: no", "Hi there.\n\nUse this"],
      [["abab"], "xabaabab!", "xaba"],
      [["stop"], "no match here", "no match here"],
    ];
    for (const [stops, text, expected] of cases) {
      for (const chunks of splits(text)) {
        expect({ chunks, text: run(stops, chunks).text }).toEqual({ chunks, text: expected });
      }
    }
  });
});
