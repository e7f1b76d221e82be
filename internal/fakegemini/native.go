package fakegemini

import (
	"encoding/base64"
	"encoding/json"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
)

// modelInfo is one entry of models.list / models.get.
type modelInfo struct {
	Name                       string   `json:"name"`
	Version                    string   `json:"version"`
	DisplayName                string   `json:"displayName"`
	Description                string   `json:"description"`
	InputTokenLimit            int      `json:"inputTokenLimit"`
	OutputTokenLimit           int      `json:"outputTokenLimit"`
	SupportedGenerationMethods []string `json:"supportedGenerationMethods"`
	Temperature                float64  `json:"temperature,omitempty"`
	TopP                       float64  `json:"topP,omitempty"`
	TopK                       int      `json:"topK,omitempty"`
	MaxTemperature             float64  `json:"maxTemperature,omitempty"`
	Thinking                   bool     `json:"thinking,omitempty"`

	embedDims int // default embedding size; 0 for generative models
}

var generativeMethods = []string{"generateContent", "countTokens", "createCachedContent", "batchGenerateContent"}

func chatModel(id, version, display string, out int, thinking bool) modelInfo {
	return modelInfo{
		Name: "models/" + id, Version: version, DisplayName: display,
		Description:     display + " (fake)",
		InputTokenLimit: 1048576, OutputTokenLimit: out,
		SupportedGenerationMethods: generativeMethods,
		Temperature:                1, TopP: 0.95, TopK: 64, MaxTemperature: 2,
		Thinking: thinking,
	}
}

// catalog is the fixed list of models the fake knows, in list order.
var catalog = []modelInfo{
	chatModel("gemini-2.0-flash", "2.0", "Gemini 2.0 Flash", 8192, false),
	chatModel("gemini-2.0-flash-lite", "2.0", "Gemini 2.0 Flash-Lite", 8192, false),
	chatModel("gemini-2.5-flash", "001", "Gemini 2.5 Flash", 65536, true),
	chatModel("gemini-2.5-flash-lite", "001", "Gemini 2.5 Flash-Lite", 65536, true),
	chatModel("gemini-2.5-pro", "2.5", "Gemini 2.5 Pro", 65536, true),
	chatModel("gemini-3-flash-preview", "3-flash-preview-12-2025", "Gemini 3 Flash Preview", 65536, true),
	chatModel("gemini-3-pro-preview", "3-pro-preview-11-2025", "Gemini 3 Pro Preview", 65536, true),
	{
		Name: "models/gemini-embedding-001", Version: "001", DisplayName: "Gemini Embedding 001",
		Description:     "Obtain a distributed representation of a text. (fake)",
		InputTokenLimit: 2048, OutputTokenLimit: 1,
		SupportedGenerationMethods: []string{"embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"},
		embedDims:                  3072,
	},
}

// lookupModel finds a model of the catalog by id (without "models/").
func lookupModel(id string) (modelInfo, bool) {
	for _, m := range catalog {
		if m.Name == "models/"+id {
			return m, true
		}
	}
	return modelInfo{}, false
}

func (m modelInfo) supports(method string) bool {
	for _, s := range m.SupportedGenerationMethods {
		if s == method {
			return true
		}
	}
	return false
}

// fakeThoughtsTokens is the thoughtsTokenCount of every answer of a thinking
// model whose thinking was not turned off.
const fakeThoughtsTokens = 7

// serveNative routes a path below /v1, /v1beta or /v1alpha.
func (s *Server) serveNative(x *exchange, rest string) {
	resource, method, hasMethod := strings.Cut(rest, ":")
	kind, id, _ := strings.Cut(resource, "/")
	if strings.Contains(id, "/") {
		x.fail(notFoundError())
		return
	}
	get, post, del := x.r.Method == http.MethodGet, x.r.Method == http.MethodPost, x.r.Method == http.MethodDelete
	switch {
	case kind == "models" && id == "" && !hasMethod && get:
		if s.authenticate(x, "ModelService.ListModels") {
			s.listModels(x)
		}
	case kind == "models" && id != "" && !hasMethod && get:
		if s.authenticate(x, "ModelService.GetModel") {
			if m, ok := lookupModel(id); ok {
				x.writeJSON(m)
			} else {
				x.fail(modelNotFoundError(x.version, id, "generateContent"))
			}
		}
	case kind == "models" && id != "" && hasMethod && post:
		s.serveModelMethod(x, id, method)
	case kind == "files" && x.version != "v1":
		s.serveFiles(x, id, hasMethod, get, del)
	case kind == "batches" && x.version != "v1":
		s.serveBatches(x, id, method, hasMethod, get, post, del)
	case kind == "auth_tokens" && id == "" && !hasMethod && post && x.version == "v1alpha":
		s.createAuthToken(x)
	case kind == "cachedContents" && x.version != "v1":
		s.serveCaches(x, id, hasMethod, get, post, del)
	default:
		x.fail(notFoundError())
	}
}

// serveModelMethod answers POST models/{id}:{method}.
func (s *Server) serveModelMethod(x *exchange, id, method string) {
	var rpc, needs string
	switch method {
	case "generateContent":
		rpc, needs = "GenerativeService.GenerateContent", "generateContent"
	case "streamGenerateContent":
		rpc, needs = "GenerativeService.StreamGenerateContent", "generateContent"
		x.sse = x.r.URL.Query().Get("alt") == "sse"
	case "countTokens":
		rpc, needs = "GenerativeService.CountTokens", "countTokens"
	case "embedContent":
		rpc, needs = "GenerativeService.EmbedContent", "embedContent"
	case "batchEmbedContents":
		rpc, needs = "GenerativeService.BatchEmbedContents", "embedContent"
	case "batchGenerateContent":
		rpc, needs = "BatchService.BatchGenerateContent", "batchGenerateContent"
	default:
		x.fail(notFoundError())
		return
	}
	if !s.authenticate(x, rpc) {
		return
	}
	model, ok := lookupModel(id)
	if !ok || !model.supports(needs) {
		x.fail(modelNotFoundError(x.version, id, method))
		return
	}
	switch method {
	case "generateContent", "streamGenerateContent":
		s.generate(x, model, id, method == "streamGenerateContent")
	case "countTokens":
		countTokens(x)
	case "embedContent", "batchEmbedContents":
		s.embed(x, model, id, method == "batchEmbedContents")
	case "batchGenerateContent":
		s.createBatch(x, id)
	}
}

// listModels answers models.list with pageSize/pageToken pagination.
func (s *Server) listModels(x *exchange) {
	start, end, next, ok := paginate(x, len(catalog), 50, 1000, "models")
	if !ok {
		return
	}
	resp := struct {
		Models        []modelInfo `json:"models"`
		NextPageToken string      `json:"nextPageToken,omitempty"`
	}{Models: catalog[start:end], NextPageToken: next}
	x.writeJSON(resp)
}

// paginate reads pageSize (default def, at most max) and pageToken, as Google's list methods
// do, for a list of total items. It returns the page's bounds and the next page's token, or
// answers the client with Google's 400 and returns ok false. Tokens are opaque offsets, one kind
// per list, so a token of one list is refused by another.
func paginate(x *exchange, total, def, max int, kind string) (start, end int, next string, ok bool) {
	q := x.r.URL.Query()
	size := def
	if v := q.Get("pageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			x.fail(badRequest("Invalid value at 'page_size' (TYPE_INT32), \"" + v + "\""))
			return 0, 0, "", false
		}
		if n > 0 {
			size = min(n, max)
		}
	}
	prefix := "fake-" + kind + "-offset:"
	if tok := q.Get("pageToken"); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		v, found := strings.CutPrefix(string(raw), prefix)
		n, err2 := strconv.Atoi(v)
		if err != nil || !found || err2 != nil || n < 0 || n > total {
			x.fail(badRequest("Invalid page token."))
			return 0, 0, "", false
		}
		start = n
	}
	end = min(start+size, total)
	if end < total {
		next = base64.RawURLEncoding.EncodeToString([]byte(prefix + strconv.Itoa(end)))
	}
	return start, end, next, true
}

// Request shapes. Google's JSON parser accepts both lowerCamel and
// snake_case field names, so both are read; top-level names it does not know
// are refused (fields.go).

type fileData struct {
	FileURI      string `json:"fileUri"`
	FileURISnake string `json:"file_uri"`
}

type part struct {
	Text          string    `json:"text"`
	FileData      *fileData `json:"fileData"`
	FileDataSnake *fileData `json:"file_data"`
}

type content struct {
	Role  string `json:"role"`
	Parts []part `json:"parts"`
}

type thinkingConfig struct {
	ThinkingBudget      *int `json:"thinkingBudget"`
	ThinkingBudgetSnake *int `json:"thinking_budget"`
}

type generationConfig struct {
	ThinkingConfig      *thinkingConfig `json:"thinkingConfig"`
	ThinkingConfigSnake *thinkingConfig `json:"thinking_config"`
}

type generateRequest struct {
	Contents               []content         `json:"contents"`
	SystemInstruction      *content          `json:"systemInstruction"`
	SystemInstructionSnake *content          `json:"system_instruction"`
	CachedContent          string            `json:"cachedContent"`
	CachedContentSnake     string            `json:"cached_content"`
	GenerationConfig       *generationConfig `json:"generationConfig"`
	GenerationConfigSnake  *generationConfig `json:"generation_config"`
}

// promptWords counts the words of every text part of the request: the fake's
// token count.
func (g *generateRequest) promptWords() int {
	n := 0
	all := g.Contents
	for _, si := range []*content{g.SystemInstruction, g.SystemInstructionSnake} {
		if si != nil {
			all = append(all[:len(all):len(all)], *si)
		}
	}
	for _, c := range all {
		for _, p := range c.Parts {
			n += len(strings.Fields(p.Text))
		}
	}
	return n
}

// echoText is the first text part of the last content.
func (g *generateRequest) echoText() string {
	if len(g.Contents) == 0 {
		return ""
	}
	for _, p := range g.Contents[len(g.Contents)-1].Parts {
		if p.Text != "" {
			return p.Text
		}
	}
	return ""
}

// thinkingOff reports whether the request set thinkingBudget to 0.
func (g *generateRequest) thinkingOff() bool {
	for _, gc := range []*generationConfig{g.GenerationConfig, g.GenerationConfigSnake} {
		if gc == nil {
			continue
		}
		for _, tc := range []*thinkingConfig{gc.ThinkingConfig, gc.ThinkingConfigSnake} {
			if tc == nil {
				continue
			}
			for _, b := range []*int{tc.ThinkingBudget, tc.ThinkingBudgetSnake} {
				if b != nil && *b == 0 {
					return true
				}
			}
		}
	}
	return false
}

// fileRefs returns the "files/{id}" names referenced by fileData parts.
func (g *generateRequest) fileRefs() []string {
	var names []string
	for _, c := range g.Contents {
		for _, p := range c.Parts {
			for _, fd := range []*fileData{p.FileData, p.FileDataSnake} {
				if fd == nil {
					continue
				}
				for _, uri := range []string{fd.FileURI, fd.FileURISnake} {
					if i := strings.LastIndex(uri, "files/"); i >= 0 {
						names = append(names, uri[i:])
					}
				}
			}
		}
	}
	return names
}

// Response shapes, with Google's field order.

type outPart struct {
	Text string `json:"text"`
}

type outContent struct {
	Parts []outPart `json:"parts"`
	Role  string    `json:"role"`
}

type candidate struct {
	Content      outContent `json:"content"`
	FinishReason string     `json:"finishReason,omitempty"`
	Index        int        `json:"index"`
}

type modalityCount struct {
	Modality   string `json:"modality"`
	TokenCount int    `json:"tokenCount"`
}

type usageMetadata struct {
	PromptTokenCount     int             `json:"promptTokenCount,omitempty"`
	CandidatesTokenCount int             `json:"candidatesTokenCount,omitempty"`
	TotalTokenCount      int             `json:"totalTokenCount,omitempty"`
	PromptTokensDetails  []modalityCount `json:"promptTokensDetails,omitempty"`
	ThoughtsTokenCount   int             `json:"thoughtsTokenCount,omitempty"`
}

type generateResponse struct {
	Candidates    []candidate   `json:"candidates"`
	UsageMetadata usageMetadata `json:"usageMetadata"`
	ModelVersion  string        `json:"modelVersion"`
	ResponseID    string        `json:"responseId"`
}

// answer is what the fake model says to one generation request.
type answer struct {
	model    string // as requested, without "models/"
	text     string
	prompt   int
	thoughts int
	id       string
}

// response builds the GenerateContentResponse carrying text, with usage
// counted over everything sent so far (cumulative, as Google does).
func (a answer) response(text, sentSoFar string, final bool) generateResponse {
	u := usageMetadata{
		PromptTokenCount:     a.prompt,
		CandidatesTokenCount: len(strings.Fields(sentSoFar)),
		ThoughtsTokenCount:   a.thoughts,
	}
	u.TotalTokenCount = u.PromptTokenCount + u.CandidatesTokenCount + u.ThoughtsTokenCount
	if a.prompt > 0 {
		u.PromptTokensDetails = []modalityCount{{Modality: "TEXT", TokenCount: a.prompt}}
	}
	c := candidate{Content: outContent{Parts: []outPart{{Text: text}}, Role: "model"}}
	if final {
		c.FinishReason = "STOP"
	}
	return generateResponse{
		Candidates:    []candidate{c},
		UsageMetadata: u,
		ModelVersion:  a.model,
		ResponseID:    a.id,
	}
}

// generate answers generateContent and streamGenerateContent.
func (s *Server) generate(x *exchange, model modelInfo, id string, stream bool) {
	var req generateRequest
	if err := json.Unmarshal(x.body, &req); err != nil {
		x.fail(invalidJSONError())
		return
	}
	if rejectUnknownNames(x, generateFields) {
		return
	}
	if len(req.Contents) == 0 {
		x.fail(badRequest("* GenerateContentRequest.contents: contents is not specified\n"))
		return
	}
	if !s.checkFileRefs(x, req.fileRefs()) {
		return
	}
	if cc := firstNonEmpty(req.CachedContent, req.CachedContentSnake); cc != "" && !s.ownsCache(x.key, cc) {
		x.fail(cacheDeniedError())
		return
	}
	if !s.admitGeneration(x, id) {
		return
	}
	a := answer{
		model:  id,
		text:   "echo: " + req.echoText(),
		prompt: req.promptWords(),
		id:     randomID(22),
	}
	if model.Thinking && !req.thinkingOff() {
		a.thoughts = fakeThoughtsTokens
	}
	switch {
	case !stream:
		x.writeJSON(a.response(a.text, a.text, true))
	case x.sse:
		s.streamSSE(x, a)
	default:
		s.streamJSONArray(x, a)
	}
}

// checkFileRefs answers 403 when the request names a file the key does not own.
func (s *Server) checkFileRefs(x *exchange, names []string) bool {
	for _, name := range names {
		if !s.ownsFile(x.key, name) {
			x.fail(fileDeniedError(name))
			return false
		}
	}
	return true
}

// countTokens answers countTokens: {"totalTokens":N,...}.
func countTokens(x *exchange) {
	var req struct {
		generateRequest
		GenerateContentRequest      *generateRequest `json:"generateContentRequest"`
		GenerateContentRequestSnake *generateRequest `json:"generate_content_request"`
	}
	if err := json.Unmarshal(x.body, &req); err != nil {
		x.fail(invalidJSONError())
		return
	}
	if rejectUnknownNames(x, countTokensFields) {
		return
	}
	n := req.promptWords()
	for _, g := range []*generateRequest{req.GenerateContentRequest, req.GenerateContentRequestSnake} {
		if g != nil {
			n += g.promptWords()
		}
	}
	resp := struct {
		TotalTokens         int             `json:"totalTokens"`
		PromptTokensDetails []modalityCount `json:"promptTokensDetails,omitempty"`
	}{TotalTokens: n}
	if n > 0 {
		resp.PromptTokensDetails = []modalityCount{{Modality: "TEXT", TokenCount: n}}
	}
	x.writeJSON(resp)
}

type embedRequest struct {
	Content                   *content `json:"content"`
	OutputDimensionality      int      `json:"outputDimensionality"`
	OutputDimensionalitySnake int      `json:"output_dimensionality"`
}

func (e embedRequest) text() string {
	var words []string
	if e.Content != nil {
		for _, p := range e.Content.Parts {
			words = append(words, p.Text)
		}
	}
	return strings.Join(words, " ")
}

type embedding struct {
	Values []float32 `json:"values"`
}

// embed answers embedContent and batchEmbedContents.
func (s *Server) embed(x *exchange, model modelInfo, id string, batch bool) {
	var reqs []embedRequest
	if batch {
		var b struct {
			Requests []embedRequest `json:"requests"`
		}
		if err := json.Unmarshal(x.body, &b); err != nil {
			x.fail(invalidJSONError())
			return
		}
		if rejectUnknownNames(x, batchEmbedFields) {
			return
		}
		if len(b.Requests) == 0 {
			x.fail(badRequest("* BatchEmbedContentsRequest.requests: requests is not specified\n"))
			return
		}
		reqs = b.Requests
	} else {
		var e embedRequest
		if err := json.Unmarshal(x.body, &e); err != nil {
			x.fail(invalidJSONError())
			return
		}
		if rejectUnknownNames(x, embedFields) {
			return
		}
		reqs = []embedRequest{e}
	}
	for _, r := range reqs {
		if r.Content == nil || len(r.Content.Parts) == 0 {
			x.fail(badRequest("* EmbedContentRequest.content: contents is not specified\n"))
			return
		}
	}
	if !s.admitGeneration(x, id) {
		return
	}
	out := make([]embedding, len(reqs))
	for i, r := range reqs {
		dims := model.embedDims
		if d := max(r.OutputDimensionality, r.OutputDimensionalitySnake); d > 0 {
			dims = min(d, model.embedDims)
		}
		out[i] = embedding{Values: fakeVector(r.text(), dims)}
	}
	if batch {
		x.writeJSON(struct {
			Embeddings []embedding `json:"embeddings"`
		}{out})
		return
	}
	x.writeJSON(struct {
		Embedding embedding `json:"embedding"`
	}{out[0]})
}

// fakeVector returns a deterministic pseudo-embedding of text.
func fakeVector(text string, dims int) []float32 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(text))
	rng := rand.New(rand.NewPCG(h.Sum64(), 0x9e3779b97f4a7c15))
	v := make([]float32, dims)
	for i := range v {
		v[i] = float32(rng.Float64()*0.2 - 0.1)
	}
	return v
}
