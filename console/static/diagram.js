// Draws the BPMN of #diagram (bpmn-js viewer) from the JSON its data-source
// names, then marks it: on a workflow, the counts of each element; on an
// execution, the path taken, where it waits and its incidents. Text is set
// with textContent only: names and ids are user data.
(function () {
  "use strict";
  const box = document.getElementById("diagram");
  if (!box) {
    return;
  }
  const problem = document.getElementById("diagram-problem");

  function show(message) {
    problem.textContent = message;
    problem.hidden = false;
  }

  function badge(kind, value, title) {
    const mark = document.createElement("span");
    mark.className = "badge " + kind;
    mark.textContent = String(value);
    mark.title = title;
    return mark;
  }

  function countWorkflow(viewer, elements) {
    const overlays = viewer.get("overlays");
    const canvas = viewer.get("canvas");
    const registry = viewer.get("elementRegistry");
    for (const [id, counts] of Object.entries(elements)) {
      if (!registry.get(id)) {
        continue; // an element the diagram does not draw
      }
      const holder = document.createElement("div");
      holder.className = "counts";
      holder.dataset.element = id;
      holder.append(
        badge("active", counts.active, "executions waiting here now"),
        badge("completed", counts.completed, "times completed"),
      );
      if (counts.incidents > 0) {
        holder.append(badge("incidents", counts.incidents, "open incidents"));
        canvas.addMarker(id, "has-incident");
      }
      overlays.add(id, { position: { top: -22, left: 0 }, html: holder });
    }
  }

  function markExecution(viewer, data) {
    const canvas = viewer.get("canvas");
    const registry = viewer.get("elementRegistry");
    const marks = [["completed", "completed"], ["waiting", "waiting"], ["incidents", "has-incident"]];
    for (const [key, marker] of marks) {
      for (const id of data[key]) {
        if (registry.get(id)) {
          canvas.addMarker(id, marker);
        }
      }
    }
  }

  async function draw() {
    const reply = await fetch(box.dataset.source, { headers: { Accept: "application/json" } });
    if (!reply.ok) {
      show("The diagram could not be loaded (HTTP " + reply.status + ").");
      return;
    }
    const data = await reply.json();
    const viewer = new BpmnJS({ container: box });
    await viewer.importXML(data.bpmn_xml);
    viewer.get("canvas").zoom("fit-viewport");
    if (box.dataset.kind === "workflow") {
      countWorkflow(viewer, data.elements);
    } else {
      markExecution(viewer, data);
    }
    box.dataset.drawn = "true";
  }

  draw().catch(function (error) {
    show("The diagram could not be drawn: " + error.message);
  });
})();
