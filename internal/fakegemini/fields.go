package fakegemini

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
)

// Google decodes request bodies with the proto JSON parser, which refuses a
// member it does not know with 400 INVALID_ARGUMENT and quotes the member's
// name back verbatim:
//
//	Invalid JSON payload received. Unknown name "<name>": Cannot find field.
//
// with a google.rpc.BadRequest detail whose fieldViolations carry the same
// text. The fake checks the top-level members of the request bodies below.
// Each set is given with the proto's snake_case names; the lowerCamel JSON
// form of each is accepted too, as the proto parser does.

// generateFields are the members of GenerateContentRequest (generateContent
// and streamGenerateContent), plus what the SDKs send besides (labels,
// serviceTier).
var generateFields = protoFields(
	"model", "contents", "system_instruction", "tools", "tool_config", "safety_settings",
	"generation_config", "cached_content", "labels", "service_tier",
)

// countTokensFields are the members of CountTokensRequest.
var countTokensFields = protoFields("model", "contents", "generate_content_request")

// embedFields are the members of EmbedContentRequest.
var embedFields = protoFields("model", "content", "task_type", "title", "output_dimensionality")

// batchEmbedFields are the members of BatchEmbedContentsRequest.
var batchEmbedFields = protoFields("model", "requests")

// chatFields are the top-level members the fake accepts on the OpenAI-compatible chat
// completions endpoint: OpenAI's chat completion parameters, generously (a client or SDK
// may send any of them; Google ignores many).
var chatFields = setOf(
	"model", "messages", "stream", "stream_options", "temperature", "top_p", "n",
	"max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice", "functions",
	"function_call", "response_format", "reasoning_effort", "seed", "presence_penalty",
	"frequency_penalty", "user", "logprobs", "top_logprobs", "parallel_tool_calls",
	"metadata", "modalities", "audio", "store", "service_tier", "logit_bias", "extra_body",
	"web_search_options", "prediction", "verbosity", "safety_identifier", "prompt_cache_key",
	"prompt_cache_retention", "google",
)

// setOf returns names as a set.
func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// protoFields returns the set of proto field names, each in its snake_case and
// lowerCamel (JSON) forms.
func protoFields(snake ...string) map[string]bool {
	m := setOf(snake...)
	for _, n := range snake {
		m[lowerCamel(n)] = true
	}
	return m
}

// lowerCamel turns a snake_case proto field name into its JSON name:
// "generation_config" becomes "generationConfig".
func lowerCamel(snake string) string {
	var b strings.Builder
	up := false
	for _, r := range snake {
		switch {
		case r == '_':
			up = true
		case up:
			b.WriteString(strings.ToUpper(string(r)))
			up = false
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// unknownNames returns the top-level member names of the JSON object body that
// are not in known, once each, in the order sent. It returns nil when body is
// not a JSON object: the request's own decoding reports that.
func unknownNames(body []byte, known map[string]bool) []string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	var names []string
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name, ok := tok.(string)
		if !ok {
			return nil
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
		if !known[name] && !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

// unknownNameMessage is Google's text for one unknown member name.
func unknownNameMessage(name string) string {
	return `Invalid JSON payload received. Unknown name "` + name + `": Cannot find field.`
}

type badRequestDetail struct {
	Type            string           `json:"@type"`
	FieldViolations []fieldViolation `json:"fieldViolations"`
}

type fieldViolation struct {
	Field       string `json:"field,omitempty"`
	Description string `json:"description"`
}

const typeBadRequest = "type.googleapis.com/google.rpc.BadRequest"

// unknownNamesError is Google's 400 for top-level member names it does not
// know: one message line and one field violation per name.
func unknownNamesError(names []string) *apiError {
	msgs := make([]string, len(names))
	violations := make([]fieldViolation, len(names))
	for i, n := range names {
		msgs[i] = unknownNameMessage(n)
		violations[i] = fieldViolation{Description: msgs[i]}
	}
	return &apiError{
		Code: http.StatusBadRequest, Message: strings.Join(msgs, "\n"), Status: "INVALID_ARGUMENT",
		Details: []any{badRequestDetail{Type: typeBadRequest, FieldViolations: violations}},
	}
}

// rejectUnknownNames answers Google's 400 when the body has a top-level member
// outside known, and reports whether it did.
func rejectUnknownNames(x *exchange, known map[string]bool) bool {
	names := unknownNames(x.body, known)
	if len(names) == 0 {
		return false
	}
	x.fail(unknownNamesError(names))
	return true
}
