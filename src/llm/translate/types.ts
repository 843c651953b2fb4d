// Wire shapes of the two LLM APIs the broker speaks, as far as the broker reads
// or writes them. Fields we do not touch are kept by the index signatures so
// same-API pass-through keeps them.
//
// OpenAI: /v1/chat/completions (chat.completion, chat.completion.chunk) and
// /v1/completions (text_completion), SSE streams ending with `data: [DONE]`.
// Ollama: /api/chat and /api/generate, NDJSON streams whose last line has
// `"done": true` with done_reason and the prompt_eval_count/eval_count counters.

/** Which API a provider serves (and a client of chat, completions or embeddings speaks). */
export type Api = 'openai' | 'ollama';
/** Which API a client speaks: those two, the OpenAI Responses API (/v1/responses) or Anthropic's Messages API (/v1/messages). */
export type ClientApi = Api | 'responses' | 'anthropic';
/**
 * What the upstream is asked for: chat (messages), completion (prompt), embed
 * (/v1/embeddings, /api/embed), or responses (/v1/responses, only on an OpenAI
 * deployment that declares `responses: true`).
 */
export type Kind = 'chat' | 'completion' | 'embed' | 'responses';

// ---- OpenAI ----

export interface OpenAITextPart {
  type: 'text';
  text: string;
}
export interface OpenAIImagePart {
  type: 'image_url';
  image_url: string | { url: string; detail?: string };
}
export type OpenAIContentPart = OpenAITextPart | OpenAIImagePart | { type: string; [k: string]: unknown };

export interface OpenAIToolCall {
  id?: string;
  index?: number;
  type?: string;
  function?: { name?: string; arguments?: string };
  /** A custom (free-form) tool's call: its name and input, in place of `function`. */
  custom?: { name?: string; input?: string };
}

export interface OpenAIMessage {
  role: string;
  content?: string | OpenAIContentPart[] | null;
  name?: string;
  tool_calls?: OpenAIToolCall[];
  tool_call_id?: string;
  /** Reasoning text as sent by DeepSeek/vLLM-style servers. */
  reasoning_content?: string;
  reasoning?: string;
  refusal?: string | null;
  [k: string]: unknown;
}

interface OpenAISampling {
  model: string;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean; [k: string]: unknown } | null;
  temperature?: number | null;
  top_p?: number | null;
  max_tokens?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  n?: number | null;
  [k: string]: unknown;
}

export interface OpenAIChatRequest extends OpenAISampling {
  messages: OpenAIMessage[];
  max_completion_tokens?: number | null;
  tools?: unknown[];
  response_format?: { type: string; json_schema?: { name?: string; schema?: unknown; [k: string]: unknown } } | null;
}

export interface OpenAICompletionRequest extends OpenAISampling {
  prompt: string | string[];
  suffix?: string | null;
}

export interface OpenAIUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  [k: string]: unknown;
}

export interface OpenAIChatChoice {
  index: number;
  message: OpenAIMessage;
  logprobs?: unknown;
  finish_reason: string | null;
}

export interface OpenAIChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  system_fingerprint?: string | null;
  choices: OpenAIChatChoice[];
  usage?: OpenAIUsage | null;
  [k: string]: unknown;
}

export interface OpenAIChunkChoice {
  index: number;
  delta?: Partial<OpenAIMessage>;
  /** Present in text_completion chunks. */
  text?: string;
  logprobs?: unknown;
  finish_reason: string | null;
}

/** A streamed chat.completion.chunk or text_completion chunk. */
export interface OpenAIChunk {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: OpenAIChunkChoice[];
  usage?: OpenAIUsage | null;
  [k: string]: unknown;
}

export interface OpenAICompletionChoice {
  text: string;
  index: number;
  logprobs: unknown;
  finish_reason: string | null;
}

export interface OpenAICompletion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: OpenAICompletionChoice[];
  usage?: OpenAIUsage | null;
  [k: string]: unknown;
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: string | null; param: string | null; request_id?: string };
}

// ---- Ollama ----

export interface OllamaToolCall {
  function: { name: string; arguments: Record<string, unknown>; index?: number };
  id?: string;
}

export interface OllamaMessage {
  role: string;
  content: string;
  images?: string[] | null;
  tool_calls?: OllamaToolCall[];
  tool_name?: string;
  /** Ollama 0.12.10+: the call a tool result answers. */
  tool_call_id?: string;
  thinking?: string;
  [k: string]: unknown;
}

export interface OllamaOptions {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  num_predict?: number;
  stop?: string[];
  seed?: number;
  frequency_penalty?: number;
  presence_penalty?: number;
  [k: string]: unknown;
}

export type OllamaFormat = '' | 'json' | Record<string, unknown>;

export interface OllamaChatRequest {
  model: string;
  messages: OllamaMessage[];
  /** Ollama streams unless told `false`. */
  stream?: boolean;
  options?: OllamaOptions;
  format?: OllamaFormat;
  tools?: unknown[];
  keep_alive?: string | number;
  [k: string]: unknown;
}

export interface OllamaGenerateRequest {
  model: string;
  prompt?: string;
  suffix?: string;
  system?: string;
  images?: string[];
  stream?: boolean;
  options?: OllamaOptions;
  format?: OllamaFormat;
  raw?: boolean;
  keep_alive?: string | number;
  [k: string]: unknown;
}

/** Counters on the final (`done: true`) object. Durations are nanoseconds. */
export interface OllamaDoneFields {
  done: boolean;
  done_reason?: string;
  total_duration?: number;
  load_duration?: number;
  prompt_eval_count?: number;
  prompt_eval_duration?: number;
  eval_count?: number;
  eval_duration?: number;
}

/** A non-streamed /api/chat reply or one line of its stream. */
export interface OllamaChatResponse extends OllamaDoneFields {
  model: string;
  created_at: string;
  message?: OllamaMessage;
  [k: string]: unknown;
}

/** A non-streamed /api/generate reply or one line of its stream. */
export interface OllamaGenerateResponse extends OllamaDoneFields {
  model: string;
  created_at: string;
  response: string;
  thinking?: string;
  context?: number[];
  [k: string]: unknown;
}

export interface OllamaErrorBody {
  error: string;
}

/** Identity of the reply we build: the model name the client asked for and the request id. */
export interface ReplyContext {
  model: string;
  id: string;
  /** The client's body, for reply fields that depend on it (an embeddings encoding_format). */
  request?: Readonly<Record<string, unknown>>;
  /** The prompt's estimated tokens, for a reply that must name them before the upstream has (Anthropic's message_start). */
  promptEstimate?: number;
  /** Milliseconds since the request arrived, for a whole reply's durations (Ollama's total_duration). */
  elapsedMs?: number;
  /**
   * A clock in milliseconds (performance.now()) for a stream's durations (Ollama's done line),
   * apart from the chain's own `now` so that reading it moves no instrumented time; absent, a
   * clock that stands still (tests that compare bytes).
   */
  durationClock?: () => number;
  /** What the broker sent upstream that an upstream's error may echo (the deployment's API key): masked in what the client sees. */
  secrets?: readonly string[];
}

/** Token usage in API-neutral form. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Of promptTokens, how many a cache served (the upstream's prompt cache; a response-cache replay: all of them); absent: none. */
  cachedTokens?: number;
  /** Of completionTokens, how many the model spent reasoning (an OpenAI upstream's usage details); absent: not said. */
  reasoningTokens?: number;
}
