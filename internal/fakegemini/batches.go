package fakegemini

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// batchOperation is the long-running Operation of a batch (batches.create answers with it, and
// batches.get returns its current state).
type batchOperation struct {
	Name     string        `json:"name"`
	Metadata batchMetadata `json:"metadata"`
	Done     bool          `json:"done,omitempty"`
}

type batchMetadata struct {
	Type        string `json:"@type"`
	Model       string `json:"model"`
	DisplayName string `json:"displayName,omitempty"`
	CreateTime  string `json:"createTime"`
	UpdateTime  string `json:"updateTime"`
	State       string `json:"state"`
	Name        string `json:"name"`
}

type storedBatch struct {
	owner string
	op    batchOperation
}

// batchDeniedError is the answer for a batch of another project (or none).
func batchDeniedError(name string) *apiError {
	return &apiError{Code: http.StatusForbidden,
		Message: "You do not have permission to access the Batch " + name + " or it may not exist.", Status: "PERMISSION_DENIED"}
}

// createBatch answers models/{id}:batchGenerateContent. The input is inline requests or a file
// (inputConfig.fileName), which the key must own.
func (s *Server) createBatch(x *exchange, id string) {
	var req struct {
		Batch struct {
			DisplayName string `json:"displayName"`
			InputConfig struct {
				FileName string `json:"fileName"`
				Requests *struct {
					Requests []json.RawMessage `json:"requests"`
				} `json:"requests"`
			} `json:"inputConfig"`
		} `json:"batch"`
	}
	if err := json.Unmarshal(x.body, &req); err != nil {
		x.fail(invalidJSONError())
		return
	}
	in := req.Batch.InputConfig
	if in.FileName == "" && (in.Requests == nil || len(in.Requests.Requests) == 0) {
		x.fail(badRequest("* BatchGenerateContentRequest.batch.input_config: input_config is required\n"))
		return
	}
	if in.FileName != "" && !s.checkFileRefs(x, []string{in.FileName}) {
		return
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	bid := randomLowerID(16)
	op := batchOperation{Name: "batches/" + bid, Metadata: batchMetadata{
		Type:  "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
		Model: "models/" + id, DisplayName: req.Batch.DisplayName, CreateTime: now, UpdateTime: now,
		State: "BATCH_STATE_PENDING", Name: "batches/" + bid,
	}}
	s.mu.Lock()
	s.batches[bid] = &storedBatch{owner: x.key, op: op}
	s.mu.Unlock()
	x.writeJSON(op)
}

// serveBatches answers batches.get (GET batches/{id}), batches.delete (DELETE) and
// batches.cancel (POST batches/{id}:cancel), for the owning key only.
func (s *Server) serveBatches(x *exchange, id, method string, hasMethod, get, post, del bool) {
	switch {
	case id == "" || (hasMethod && (method != "cancel" || !post)) || (!hasMethod && !get && !del):
		x.fail(notFoundError())
		return
	}
	if !s.authenticate(x, "BatchService.GetBatch") {
		return
	}
	s.mu.Lock()
	b, ok := s.batches[id]
	if ok && b.owner == x.key {
		switch {
		case del:
			delete(s.batches, id)
		case hasMethod:
			b.op.Metadata.State = "BATCH_STATE_CANCELLED"
			b.op.Done = true
		}
	}
	var op batchOperation
	if ok {
		op = b.op
	}
	s.mu.Unlock()
	if !ok || b.owner != x.key {
		x.fail(batchDeniedError("batches/" + strings.TrimPrefix(id, "batches/")))
		return
	}
	if del || hasMethod {
		x.writeJSON(struct{}{})
		return
	}
	x.writeJSON(op)
}
