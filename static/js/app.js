// Progressive enhancement only: drag-and-drop (files or a folder), previews, the upload progress bar, focus
// and scroll after a swap, retrying a refused upload when the server says when.
// Every form works without this file (and without htmx).
(function () {
  "use strict";

  function showMessage(text) {
    var box = document.getElementById("messages");
    if (!box) return;
    box.innerHTML = "";
    var alert = document.createElement("div");
    alert.className = "alert alert-error";
    alert.setAttribute("role", "alert");
    var p = document.createElement("p");
    p.textContent = text;
    alert.appendChild(p);
    box.appendChild(alert);
  }

  var THUMBNAILS = 8;  // previews shown for a batch: enough to recognise it, cheap for thousands of files

  function toArray(list) { return Array.prototype.slice.call(list || []); }
  function isArchive(file) { return /\.zip$/i.test(file.name) || /zip/.test(file.type); }
  function isImage(file) { return file.type.indexOf("image/") === 0; }
  // Several files, or an archive, become a collection on the server; one image is classified in place.
  function isBatch(files) { return files.length > 1 || (files.length === 1 && isArchive(files[0])); }
  function plural(n, word) { return n.toLocaleString() + " " + word + (n === 1 ? "" : "s"); }
  function sizeText(bytes) {
    return bytes < 1048576 ? Math.max(1, Math.round(bytes / 1024)) + " kB" : (bytes / 1048576).toFixed(1) + " MB";
  }
  function totalBytes(files) { return files.reduce(function (sum, f) { return sum + f.size; }, 0); }

  // The files in a dropped folder, however deep, named by their path in it (as a folder input names them).
  function walk(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve, reject) {
        entry.file(function (file) {
          var name = entry.fullPath.replace(/^\//, "");
          resolve([new File([file], name, { type: file.type, lastModified: file.lastModified })]);
        }, reject);
      });
    }
    var reader = entry.createReader();
    return new Promise(function (resolve, reject) {
      var children = [];
      (function more() {  // readEntries answers in batches until an empty one
        reader.readEntries(function (batch) {
          if (!batch.length) return resolve(children);
          children = children.concat(toArray(batch));
          more();
        }, reject);
      })();
    }).then(function (children) {
      return Promise.all(children.map(walk)).then(function (lists) { return [].concat.apply([], lists); });
    });
  }

  function setupUpload(form) {
    if (form.dataset.ready) return;
    form.dataset.ready = "true";
    var input = form.querySelector("#file");
    var folder = form.querySelector("#folder");
    var zone = form.querySelector("[data-dropzone]");
    var preview = form.querySelector("#preview");
    var chosen = form.querySelector("#chosen");
    var thumbs = form.querySelector("#chosen-thumbs");
    var summary = form.querySelector("#chosen-summary");
    var problem = form.querySelector("#file-problem");
    var progress = form.querySelector("#upload-progress");
    var phase = form.querySelector("#upload-phase");
    var submit = form.querySelector("button[type=submit]");
    var limits = {
      file: parseInt(form.dataset.maxBytes || "0", 10),
      total: parseInt(form.dataset.maxTotalBytes || "0", 10),
      count: parseInt(form.dataset.maxFiles || "0", 10)
    };
    var previewUrls = [];
    var sending = [];

    function chosenFiles() { return toArray(input.files).concat(toArray(folder && folder.files)); }

    function fileProblem(files) {
      if (!files.length) return "Choose an image to classify first (or several, a folder or a zip archive)";
      if (!isBatch(files)) {
        return limits.file && files[0].size > limits.file ? "The file is larger than " + sizeText(limits.file) : "";
      }
      if (limits.count && files.length > limits.count) {
        return "That is " + plural(files.length, "file") + ": at most " + limits.count.toLocaleString() + " at once";
      }
      var total = totalBytes(files);
      if (limits.total && total > limits.total) {
        return "Together the files are " + sizeText(total) + ": at most " + sizeText(limits.total) + " at once";
      }
      return "";
    }

    function report(text) {
      problem.textContent = text;
      problem.hidden = !text;
      if (text) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }

    function describe(files) {
      if (files.length === 1) return files[0].name + " · zip archive, " + sizeText(files[0].size);
      var images = files.filter(isImage).length;
      var archives = files.filter(isArchive).length;
      var parts = [plural(images, "image")];
      if (archives) parts.push(plural(archives, "zip archive"));
      if (files.length > images + archives) parts.push(plural(files.length - images - archives, "other file"));
      return parts.join(", ") + " · " + sizeText(totalBytes(files));
    }

    function clearPreview() {
      previewUrls.forEach(function (url) { URL.revokeObjectURL(url); });
      previewUrls = [];
      preview.hidden = true;
      chosen.hidden = true;
      thumbs.textContent = "";
      zone.classList.remove("has-preview", "has-batch");
    }

    function thumbnail(file) {
      var url = URL.createObjectURL(file);
      previewUrls.push(url);
      var image = document.createElement("img");
      image.alt = "";
      image.src = url;
      return image;
    }

    function showBatch(files) {
      var images = files.filter(isImage);
      images.slice(0, THUMBNAILS).forEach(function (file) { thumbs.appendChild(thumbnail(file)); });
      if (images.length > THUMBNAILS) {
        var more = document.createElement("span");
        more.className = "more";
        more.textContent = "+" + (images.length - THUMBNAILS).toLocaleString();
        thumbs.appendChild(more);
      }
      summary.textContent = describe(files);
      chosen.hidden = false;
      zone.classList.add("has-batch");
    }

    function showChoice() {
      clearPreview();
      var files = chosenFiles();
      report(files.length ? fileProblem(files) : "");
      var batch = isBatch(files);
      var onlyImages = batch && files.every(isImage);
      submit.textContent = onlyImages ? "Classify " + plural(files.length, "image") : batch ? "Classify all" : "Classify";
      if (batch) showBatch(files);
      else if (files.length && isImage(files[0])) {
        var url = URL.createObjectURL(files[0]);
        previewUrls.push(url);
        preview.src = url;
        preview.hidden = false;
      }
      if (files.length && (batch || isImage(files[0]))) zone.classList.add("has-preview");
    }

    // The latest choice wins: files and a folder are not sent together.
    input.addEventListener("change", function () {
      if (folder && input.files.length) folder.value = "";
      showChoice();
    });
    if (folder) {
      folder.addEventListener("change", function () {
        if (folder.files.length) input.value = "";
        showChoice();
      });
    }

    function choose(files) {
      var transfer = new DataTransfer();
      files.forEach(function (file) { transfer.items.add(file); });
      input.files = transfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }

    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "dragend", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () {
        zone.classList.remove("dragging");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var transfer = event.dataTransfer;
      if (!transfer) return;
      // Entries must be taken during the event; a folder is then read at leisure.
      var entries = toArray(transfer.items).map(function (item) {
        return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      });
      if (!entries.some(function (entry) { return entry && entry.isDirectory; })) {
        if (transfer.files.length) choose(toArray(transfer.files));
        return;
      }
      Promise.all(entries.filter(Boolean).map(walk))
        .then(function (lists) { choose([].concat.apply([], lists)); })
        .catch(function () { report("Could not read the folder dropped: choose it with the folder button instead"); });
    });

    // Refuse what the server would refuse before sending megabytes for nothing.
    form.addEventListener("htmx:beforeRequest", function (event) {
      if (event.detail.elt !== form) return;
      sending = chosenFiles();
      var text = fileProblem(sending);
      report(text);
      if (text) {
        event.preventDefault();
        input.focus();
        return;
      }
      progress.value = 0;
      phase.textContent = "Uploading…";
    });
    form.addEventListener("htmx:xhr:progress", function (event) {
      if (!event.detail.lengthComputable || !event.detail.total) return;
      var percent = Math.round((event.detail.loaded / event.detail.total) * 100);
      progress.value = percent;
      if (percent >= 100) phase.textContent = isBatch(sending) ? "Checking the images…" : "Classifying…";
    });
  }

  function findUploadForm(root) {
    if (root.id === "upload-form") return root;
    return root.querySelector ? root.querySelector("#upload-form") : null;
  }

  function init() {
    var form = findUploadForm(document);
    if (form) setupUpload(form);

    document.addEventListener("click", function (event) {
      var button = event.target.closest("[data-dismiss]");
      if (button) button.closest(".alert").remove();
    });
    document.body.addEventListener("htmx:sendError", function () {
      showMessage("Could not reach the server. Check the connection and try again.");
    });
    // htmx.onLoad, without needing htmx yet: it may still be on its way from the local copy
    // (htmx-fallback.js) when the CDN did not load.
    document.body.addEventListener("htmx:load", function (event) {
      var element = event.detail.elt;
      var swapped = findUploadForm(element);  // the classify page swapped in as a partial
      if (swapped) setupUpload(swapped);
      if (element.id !== "result") return;
      showResult(element);
      retryLater(element);
    });
  }

  function inView(element) {
    var box = element.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= (window.innerHeight || document.documentElement.clientHeight);
  }

  // A new result takes the focus, so screen readers and keyboards land on it, and comes into view: on a
  // phone it is below the upload form. Its image loads later, above the heading on a phone and pushing it
  // down: so look again once the image is there, unless the reader has scrolled elsewhere meanwhile.
  var shown = null;  // the result shown last: a waiting one asks again every few seconds, and stays put
  function showResult(result) {
    var heading = result.querySelector("[data-focus]");
    var key = result.getAttribute("data-shown");
    if (key && key === shown) return;
    shown = key;
    if (!heading) return;
    heading.focus({ preventScroll: true });
    function reveal() { if (!inView(heading)) result.scrollIntoView({ block: "start" }); }
    reveal();
    var image = result.querySelector(".result-image img");
    if (!image || image.complete) return;
    var scrolled = window.scrollY;
    image.addEventListener("load", function () {
      if (Math.abs(window.scrollY - scrolled) < 2) reveal();
    }, { once: true });
  }

  // A refusal that says when to try again (503 with Retry-After: the service busy, or no worker yet) is
  // retried by itself with the files still chosen, counting down; a few times, not forever.
  var MAX_RETRIES = 20;
  var retries = 0;
  function retryLater(result) {
    var note = result.querySelector("[data-retry-after]");
    var form = document.getElementById("upload-form");
    if (!note) { retries = 0; return; }
    var files = form && toArray(form.querySelector("#file").files).concat(toArray((form.querySelector("#folder") || {}).files));
    if (!files || !files.length || retries >= MAX_RETRIES) return;
    var seconds = Math.max(1, Math.min(parseInt(note.getAttribute("data-retry-after"), 10) || 5, 120));
    function tick() {
      if (!document.body.contains(note)) return;  // something else replaced the result meanwhile
      if (seconds <= 0) {
        retries += 1;
        note.textContent = "Trying again…";
        if (form.requestSubmit) form.requestSubmit();
        else window.htmx.trigger(form, "submit");
        return;
      }
      note.textContent = "Trying again by itself in " + seconds + " s…";
      seconds -= 1;
      window.setTimeout(tick, 1000);
    }
    tick();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
