// Streaming detokenizer: token ids in, text deltas out. Decoding tokens one by one loses
// SentencePiece spaces and splits multi-byte characters, so each step decodes a short window
// (the previously emitted chunk + the pending tokens) and emits what the new tokens added.
// The window only spans the last emitted chunk, so a step costs O(1) decoded tokens.

export interface TokenDecoder {
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  isSpecial(id: number): boolean;
}

export interface DetokenizerOptions {
  /** Leave special tokens out of the text (default false, like Tokenizer.decode). */
  skipSpecialTokens?: boolean;
  /**
   * Ids that come before the streamed ones (e.g. the prompt's tail), so the first streamed token
   * decodes in context: with them a leading SentencePiece space is kept rather than stripped.
   */
  contextIds?: readonly number[];
  /** Give up holding back an unfinished character after this many tokens (default 8). */
  maxHeldTokens?: number;
}

const REPLACEMENT_CHARACTER = "\uFFFD";
const CONTEXT_TOKENS = 4;

export class StreamingDetokenizer {
  private readonly skipSpecialTokens: boolean;
  private readonly maxHeldTokens: number;
  /** Ids from the start of the previously emitted chunk to now. */
  private window: number[];
  /** window[0, emittedCount) has been emitted (or is context); the rest is pending. */
  private emittedCount: number;
  /** decode(window[0, emittedCount)). */
  private emittedText: string;

  constructor(
    private readonly tokenizer: TokenDecoder,
    options: DetokenizerOptions = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? false;
    this.maxHeldTokens = options.maxHeldTokens ?? 8;
    this.window = this.keptIds(options.contextIds ?? []).slice(-CONTEXT_TOKENS);
    this.emittedCount = this.window.length;
    this.emittedText = this.decode(this.window);
  }

  /** Feed one id; returns the text it completes (often "", e.g. mid-character). */
  push(id: number): string {
    if (this.skipSpecialTokens && this.tokenizer.isSpecial(id)) return "";
    this.window.push(id);
    const text = this.decode(this.window);
    const pending = this.window.length - this.emittedCount;
    const unfinished = text.length <= this.emittedText.length || text.endsWith(REPLACEMENT_CHARACTER);
    if (unfinished && pending < this.maxHeldTokens) return "";
    return this.emit(text);
  }

  /** Feed several ids; returns the concatenated text. */
  pushMany(ids: readonly number[]): string {
    let text = "";
    for (const id of ids) text += this.push(id);
    return text;
  }

  /** End of stream: release whatever was held back (an unfinished character becomes U+FFFD). */
  flush(): string {
    if (this.window.length === this.emittedCount) return "";
    return this.emit(this.decode(this.window));
  }

  private emit(text: string): string {
    const delta = text.slice(this.emittedText.length);
    // The chunk just emitted becomes the context for the next one.
    this.window = this.window.slice(this.emittedCount);
    this.emittedCount = this.window.length;
    this.emittedText = this.decode(this.window);
    return delta;
  }

  private keptIds(ids: readonly number[]): number[] {
    return this.skipSpecialTokens ? ids.filter((id) => !this.tokenizer.isSpecial(id)) : [...ids];
  }

  private decode(ids: readonly number[]): string {
    return ids.length === 0 ? "" : this.tokenizer.decode(ids, { skipSpecialTokens: this.skipSpecialTokens });
  }
}
