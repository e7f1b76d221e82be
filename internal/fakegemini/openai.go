package fakegemini

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// serveOpenAI routes a path below /v1beta/openai/.
func (s *Server) serveOpenAI(x *exchange, rest string) {
	switch {
	case rest == "chat/completions" && x.r.Method == http.MethodPost:
		if s.authenticate(x, "OpenAiCompatibilityService.ChatCompletions") {
			s.chatCompletions(x)
		}
	case rest == "embeddings" && x.r.Method == http.MethodPost:
		if s.authenticate(x, "OpenAiCompatibilityService.Embeddings") {
			s.openAIEmbeddings(x)
		}
	case rest == "models" && x.r.Method == http.MethodGet:
		if s.authenticate(x, "OpenAiCompatibilityService.ListModels") {
			data := make([]openAIModel, len(catalog))
			for i, m := range catalog {
				data[i] = newOpenAIModel(m)
			}
			x.writeJSON(struct {
				Object string        `json:"object"`
				Data   []openAIModel `json:"data"`
			}{"list", data})
		}
	case strings.HasPrefix(rest, "models/") && x.r.Method == http.MethodGet:
		if s.authenticate(x, "OpenAiCompatibilityService.GetModel") {
			id := strings.TrimPrefix(strings.TrimPrefix(rest, "models/"), "models/")
			if m, ok := lookupModel(id); ok {
				x.writeJSON(newOpenAIModel(m))
			} else {
				x.fail(modelNotFoundError(x.version, id, "generateContent"))
			}
		}
	default:
		x.fail(notFoundError())
	}
}

type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	OwnedBy string `json:"owned_by"`
}

func newOpenAIModel(m modelInfo) openAIModel {
	return openAIModel{ID: m.Name, Object: "model", OwnedBy: "google"}
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// text returns the message content, given either as a string or as an
// array of {"type":"text","text":...} parts.
func (m chatMessage) text() string {
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(m.Content, &parts)
	var texts []string
	for _, p := range parts {
		if p.Type == "text" {
			texts = append(texts, p.Text)
		}
	}
	return strings.Join(texts, " ")
}

type chatDelta struct {
	Content string `json:"content"`
	Role    string `json:"role,omitempty"`
}

type chatChoice struct {
	Delta        *chatDelta `json:"delta,omitempty"`
	FinishReason string     `json:"finish_reason,omitempty"`
	Index        int        `json:"index"`
	Message      *chatDelta `json:"message,omitempty"`
}

type chatUsage struct {
	CompletionTokens int `json:"completion_tokens"`
	PromptTokens     int `json:"prompt_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatCompletion struct {
	Choices []chatChoice `json:"choices"`
	Created int64        `json:"created"`
	ID      string       `json:"id"`
	Model   string       `json:"model"`
	Object  string       `json:"object"`
	Usage   *chatUsage   `json:"usage,omitempty"`
}

// resolveOpenAIModel finds the model named in an OpenAI-style body ("x" or
// "models/x"), answering 400/404 when it is missing or unknown.
func resolveOpenAIModel(x *exchange, name, method string) (modelInfo, string, bool) {
	if name == "" {
		x.fail(badRequest("model is not specified"))
		return modelInfo{}, "", false
	}
	id := strings.TrimPrefix(name, "models/")
	m, ok := lookupModel(id)
	if !ok || !m.supports(method) {
		x.fail(modelNotFoundError(x.version, id, method))
		return modelInfo{}, "", false
	}
	return m, id, true
}

// chatCompletions answers POST /v1beta/openai/chat/completions, as one
// chat.completion or, with "stream": true, as chat.completion.chunk events
// ending with a chunk that carries usage and "data: [DONE]".
func (s *Server) chatCompletions(x *exchange) {
	var req struct {
		Model    string        `json:"model"`
		Messages []chatMessage `json:"messages"`
		Stream   bool          `json:"stream"`
	}
	if err := json.Unmarshal(x.body, &req); err != nil {
		x.fail(invalidJSONError())
		return
	}
	if rejectUnknownNames(x, chatFields) {
		return
	}
	_, id, ok := resolveOpenAIModel(x, req.Model, "generateContent")
	if !ok {
		return
	}
	if len(req.Messages) == 0 {
		x.fail(badRequest("messages is not specified"))
		return
	}
	if !s.admitGeneration(x, id) {
		return
	}
	prompt, last := 0, ""
	for _, m := range req.Messages {
		t := m.text()
		prompt += len(strings.Fields(t))
		if m.Role == "user" {
			last = t
		}
	}
	reply := "echo: " + last
	usage := &chatUsage{PromptTokens: prompt, CompletionTokens: len(strings.Fields(reply))}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	base := chatCompletion{Created: time.Now().Unix(), ID: randomID(22), Model: req.Model}
	if !req.Stream {
		base.Object = "chat.completion"
		base.Choices = []chatChoice{{FinishReason: "stop", Message: &chatDelta{Content: reply, Role: "assistant"}}}
		base.Usage = usage
		x.writeJSON(base)
		return
	}

	events, delay, _ := s.streamShape()
	sw, done := s.startStream(x, "text/event-stream")
	defer done()
	base.Object = "chat.completion.chunk"
	for i, piece := range splitText(reply, events) {
		if i > 0 && !sw.wait(delay) {
			return
		}
		chunk := base
		choice := chatChoice{Delta: &chatDelta{Content: piece, Role: "assistant"}}
		if i == events-1 {
			choice.FinishReason = "stop"
			chunk.Usage = usage
		}
		chunk.Choices = []chatChoice{choice}
		if !sw.send([]byte("data: " + strings.TrimSuffix(string(encodeJSON(chunk, false)), "\n") + "\n\n")) {
			return
		}
	}
	sw.send([]byte("data: [DONE]\n\n"))
}

// openAIEmbeddings answers POST /v1beta/openai/embeddings.
func (s *Server) openAIEmbeddings(x *exchange) {
	var req struct {
		Model      string          `json:"model"`
		Input      json.RawMessage `json:"input"`
		Dimensions int             `json:"dimensions"`
	}
	if err := json.Unmarshal(x.body, &req); err != nil {
		x.fail(invalidJSONError())
		return
	}
	m, id, ok := resolveOpenAIModel(x, req.Model, "embedContent")
	if !ok {
		return
	}
	var inputs []string
	var one string
	if json.Unmarshal(req.Input, &one) == nil {
		inputs = []string{one}
	} else if json.Unmarshal(req.Input, &inputs) != nil || len(inputs) == 0 {
		x.fail(badRequest("input is not specified"))
		return
	}
	if !s.admitGeneration(x, id) {
		return
	}
	dims := m.embedDims
	if req.Dimensions > 0 {
		dims = min(req.Dimensions, dims)
	}
	type item struct {
		Object    string    `json:"object"`
		Embedding []float32 `json:"embedding"`
		Index     int       `json:"index"`
	}
	data := make([]item, len(inputs))
	words := 0
	for i, in := range inputs {
		data[i] = item{Object: "embedding", Embedding: fakeVector(in, dims), Index: i}
		words += len(strings.Fields(in))
	}
	type usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	}
	x.writeJSON(struct {
		Object string `json:"object"`
		Data   []item `json:"data"`
		Model  string `json:"model"`
		Usage  usage  `json:"usage"`
	}{"list", data, req.Model, usage{words, words}})
}
